"""The online scheduler: rounds of learning over the store's trajectories, each published as a version.

One round (`Scheduler.run_round`):

    claim          the store hands out a batch of complete trajectories (or this worker's unfinished round)
    export         RUN_DIR/round_<r>/trajectories.jsonl (the trajectory JSONL the batch stages read)
    extract        the round's start version turns them into K knowledge texts   (oel.loop.stages.extract)
    consolidate    that version reading the lessons teaches itself -> a candidate (oel.loop.stages.consolidate)
    gate           optional: the candidate and the start version on the configured check
    publish        the candidate becomes the next version and current.json moves (oel.online.versions)
    finish         the store marks the round done (retention may delete its conversations)

The extract and consolidate stages are the loop's own functions, run on a context whose model is
the round's start version and whose layout reads the exported file (`OnlineLayout`). Every stage
writes `_complete.json` last and is skipped once it has one; the start version is recorded in
`round.json` before anything else, so `kill -9` at any point and a restart resumes the same round
(same trajectories, same start model, completed stages skipped) and publishes it at most once
(publish is idempotent per round). A round that raises -- a non-finite loss is a TrainingError --
is failed in the store (its trajectories return to the pool), publishes nothing, and its error is a
row of RUN_DIR/metrics.jsonl. A round the gate refuses is finished (its data was learned from and
judged); current stays, and the candidate stays in the round's consolidate/model for inspection.
"""

from __future__ import annotations

import fcntl
import logging
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from oel.backends.hf import HFBackend
from oel.config import updated
from oel.errors import ConfigError, DataError
from oel.evaluate import evaluate as run_evaluate
from oel.io import atomic_write_json, iter_jsonl, read_json
from oel.layout import MARKER, RunLayout, read_marker
from oel.loop import stages
from oel.loop.config import LoopConfig
from oel.loop.context import MetricsLog, RoundContext
from oel.models import ModelConfig, load_model
from oel.online.config import GATE_METRIC, OnlineConfig
from oel.online.gate import compare, refuse_collapse
from oel.online.pg import is_url
from oel.online.rounds import Round
from oel.online.store import Store
from oel.online.versions import Version, Versions, version_name
from oel.online.vllm_lora import swap_published

log = logging.getLogger(__name__)

ROUND_TRAJECTORIES = "trajectories.jsonl"
ROUND_STATE = "round.json"
EVALUATE_CANDIDATE, EVALUATE_CURRENT = "evaluate_candidate", "evaluate_current"
SECONDS_PER_MINUTE = 60.0
StageFn = Callable[[RoundContext], dict[str, Any]]


class OnlineLayout(RunLayout):
    """The scheduler's run dir: the loop's layout, except that a round's trajectories are one exported file.

        RUN_DIR/metrics.jsonl                 stage rows (as the loop's) and one `round` row per round
        RUN_DIR/round_<r>/round.json          the round's start version and trajectory ids (written first)
        RUN_DIR/round_<r>/trajectories.jsonl  the store's export; extraction and consolidation both read it
        RUN_DIR/round_<r>/extract/, consolidate/, evaluate_candidate/, evaluate_current/, gate/, publish/
    """

    def round_trajectories(self, r: int) -> Path:
        return self.round_dir(r) / ROUND_TRAJECTORIES

    def extract_trajectories(self, r: int) -> Path:
        return self.round_trajectories(r)

    def train_trajectories(self, r: int) -> Path:
        return self.round_trajectories(r)

    def round_state(self, r: int) -> Path:
        return self.round_dir(r) / ROUND_STATE


@dataclass
class OnlineRoundContext(RoundContext):
    """A loop round context whose M_r is the round's start version, not the previous round's output."""

    start: Version | None = field(default=None)

    @property
    def layout(self) -> OnlineLayout:
        return OnlineLayout(self.config.run_dir)

    @property
    def model_config(self) -> ModelConfig:
        assert self.start is not None
        return updated(self.config.model, name=self.start.model_dir)

    @property
    def model_id(self) -> str:
        assert self.start is not None
        return f"{self.config.model.name}@{version_name(self.start.version)}"


@dataclass(frozen=True)
class RoundOutcome:
    """What one round did: published a version, was refused by the gate, or failed."""

    round: int
    status: str  # "published" | "refused" | "failed"
    trajectories: int
    resumed: bool
    version: int | None = None
    verdict: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class SchedulerStopped(Exception):
    """SIGTERM arrived: the round stops between stages and stays claimed, to resume on restart."""


LOCK_FILE = "scheduler.lock"
"""Held (flock) by the one scheduler working in a run dir; a second one is refused at start."""


def hold_lock(path: Path) -> IO[str]:
    """An exclusive lock on `path` for this process's lifetime, or a one-line ConfigError if another holds it.

    Two schedulers on one run dir would resume the same round side by side; the kernel releases
    the lock when its holder exits, however it exits, so a killed scheduler never blocks its restart.
    """
    f = open(path, "a+")  # noqa: SIM115 - kept open: the lock lives as long as the descriptor
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ConfigError(f"run_dir: {path.parent} is in use by another running scheduler "
                          f"({path.name} is locked)") from None
    return f


def run_hook(template: str, version: Version, timeout_s: float) -> dict[str, Any]:
    """Run the publish hook for `version` (argv from `template`, no shell); its outcome for the marker.

    The serving side's switch when it is not oel's own gateway: e.g. a script that restarts vLLM on
    `{model_dir}`, or loads it as a LoRA adapter through vLLM's endpoint.
    """
    argv = [a.format(model_dir=version.model_dir, version=version.version) for a in shlex.split(template)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        code, tail = done.returncode, (done.stderr or done.stdout).strip()[-HOOK_OUTPUT_CHARS:]
    except (OSError, subprocess.TimeoutExpired) as e:
        code, tail = -1, one_line(e)
    seconds = round(time.perf_counter() - t0, 2)
    if code != 0:
        log.error("publish hook for %s failed (exit %s): %s", version_name(version.version), code, tail)
    return {"hook_exit": code, "hook_seconds": seconds, **({"hook_output": tail} if code != 0 else {})}


HOOK_OUTPUT_CHARS = 300
"""How much of a failing hook's output is kept in the publish marker and the log."""


def one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


class Scheduler:
    """Runs rounds over a store and publishes versions; `run_round()` once, `run_forever()` as a service."""

    def __init__(self, config: OnlineConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.loop_config = config.loop_config()
        self.layout = OnlineLayout(config.run_dir)
        self.layout.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = hold_lock(self.layout.run_dir / LOCK_FILE)
        self.versions = Versions(config.versions.dir, keep_last=config.versions.keep_last)
        self.versions.ensure_base(config.model.name)
        self.store = Store.open(config.store, retention=config.retention)
        self.metrics = MetricsLog(self.loop_config)
        self._stop_requested = False
        self._clock = clock
        self._last_round = clock()

    def close(self) -> None:
        self.metrics.close()
        self.store.close()
        self._lock.close()  # the lock goes with the file descriptor (and with the process on kill -9)

    # ---- when -------------------------------------------------------------------------------

    def _claim(self) -> Round | None:
        """N new trajectories, or (every T minutes) at least one; an unfinished round always comes back first."""
        c = self.config
        timed = c.every_minutes > 0 and self._clock() - self._last_round >= c.every_minutes * SECONDS_PER_MINUTE
        least = 1 if timed else c.min_trajectories
        return self.store.claim_round(least, max_trajectories=c.max_trajectories or None, worker=c.worker)

    # ---- one round --------------------------------------------------------------------------

    def run_round(self) -> RoundOutcome | None:
        """One round, or None when there is not enough data yet."""
        rnd = self._claim()
        if rnd is None:
            return None
        self._last_round = self._clock()
        log.info("round %d: %d trajectories%s", rnd.number, len(rnd.trajectory_ids),
                 " (resumed)" if rnd.resumed else "")
        t0 = time.perf_counter()
        try:
            outcome = self._run(rnd)
        except SchedulerStopped:
            raise
        except Exception as e:
            if read_marker(self.layout.stage_dir(rnd.number, "publish")) is not None:
                raise  # published already: the round must not go back to the pool
            log.exception("round %d failed; nothing published", rnd.number)
            self.store.fail_round(rnd.number)
            outcome = RoundOutcome(rnd.number, "failed", len(rnd.trajectory_ids), rnd.resumed, error=one_line(e))
        self._log_round(outcome, time.perf_counter() - t0)
        return outcome

    def _run(self, rnd: Round) -> RoundOutcome:
        r = rnd.number
        start = self.versions.get(self._round_state(rnd)["start_version"])
        if not self.layout.round_trajectories(r).is_file():
            self.store.export_jsonl(self.layout.round_trajectories(r), round=r)
        ctx = OnlineRoundContext(self._round_config(len(rnd.trajectory_ids)), r, metrics=self.metrics, start=start)
        self._stage(ctx, "extract", stages.extract)
        self._stage(ctx, "consolidate", stages.consolidate)
        verdict = self._stage(ctx, "gate", self._gate)
        published = self._stage(ctx, "publish", lambda c: self._publish(c, verdict))
        if self.config.retention == "delete_after_consolidation":
            self.layout.round_trajectories(r).unlink(missing_ok=True)  # the store deletes its copy at finish
        self.store.finish_round(r)
        status = "published" if published.get("version") is not None else "refused"
        return RoundOutcome(r, status, len(rnd.trajectory_ids), rnd.resumed, published.get("version"), verdict)

    def _round_config(self, n: int) -> LoopConfig:
        """Extraction reads every trajectory of the round: num_trajectories is the round's count."""
        c = self.loop_config
        return updated(c, extract=updated(c.extract, num_trajectories=n))

    def _round_state(self, rnd: Round) -> dict[str, Any]:
        """Written once, before any stage: a resumed round starts from the same version whatever current is now."""
        path = self.layout.round_state(rnd.number)
        if path.is_file():
            return read_json(path, "round state")
        state = {"round": rnd.number, "start_version": self.versions.current().version,
                 "trajectory_ids": list(rnd.trajectory_ids), "started": time.time()}
        atomic_write_json(path, state)
        return state

    def _stage(self, ctx: OnlineRoundContext, name: str, fn: StageFn) -> dict[str, Any]:
        """Skipped when its marker exists; else run, logged and marked (the marker last)."""
        sdir = ctx.layout.stage_dir(ctx.round, name)
        done = read_marker(sdir)
        if done is not None:
            log.info("round %d: %s already complete, skipped", ctx.round, name)
            return done
        if self._stop_requested:
            raise SchedulerStopped(f"stopped before round {ctx.round}'s {name} stage")
        log.info("round %d: %s started", ctx.round, name)
        t0 = time.perf_counter()
        summary = {**fn(ctx), "seconds": round(time.perf_counter() - t0, 2)}
        self.metrics.log(ctx.round, name, summary)
        sdir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(sdir / MARKER, summary)
        return summary

    # ---- gate and publish -------------------------------------------------------------------

    def _gate(self, ctx: OnlineRoundContext) -> dict[str, Any]:
        """The verdict: the candidate against the start version on the configured check."""
        check, evaluate = self.config.gate.check, self.config.round_evaluate()
        candidate = self._evaluate(ctx, updated(self.config.model, name=str(ctx.layout.model_after(ctx.round))),
                                   EVALUATE_CANDIDATE, f"{self.config.model.name}@round{ctx.round}") if evaluate else {}
        if check == "off":
            verdict = {"check": "off", "passed": True, **{f"candidate_{k}": v for k, v in candidate.items()}}
        else:
            current = self._evaluate(ctx, ctx.model_config, EVALUATE_CURRENT, ctx.model_id)
            verdict = compare(check, GATE_METRIC[check], candidate, current, self.config.gate.tolerance)
        return refuse_collapse(verdict, candidate, self.config.gate.max_move_share)

    def _evaluate(self, ctx: OnlineRoundContext, model: ModelConfig, which: str, model_id: str) -> dict[str, Any]:
        evaluate = self.config.round_evaluate()
        assert evaluate is not None
        out = ctx.layout.stage_dir(ctx.round, which)
        lm = load_model(model)
        backend = HFBackend(lm.model, lm.tokenizer, model_id=model_id, max_batch_size=evaluate.max_batch_size,
                            model_config=model)
        summary = run_evaluate(backend, evaluate, env=self.config.env, out_dir=out).summary()
        return {k: v for k, v in summary.items() if isinstance(v, (int, float)) or v is None}

    def _publish(self, ctx: OnlineRoundContext, verdict: dict[str, Any]) -> dict[str, Any]:
        if not verdict.get("passed"):
            log.warning("round %d: the gate refused the candidate (%s); current stays", ctx.round,
                        verdict.get("reason", ""))
            return {"version": None}
        assert ctx.start is not None
        consolidated = read_marker(ctx.layout.stage_dir(ctx.round, "consolidate")) or {}
        metrics = {f"consolidate_{k}": v for k, v in consolidated.items()}
        v = self.versions.publish(ctx.layout.model_after(ctx.round), ctx.round, metrics, verdict,
                                  parent=ctx.start.version)
        log.info("round %d: published %s", ctx.round, version_name(v.version))
        out: dict[str, Any] = {"version": v.version}
        if self.config.vllm_lora.url:
            out.update(self._swap_vllm_lora(v))
        if self.config.publish_hook:
            out.update(run_hook(self.config.publish_hook, v, self.config.hook_timeout_s))
        return out

    def _swap_vllm_lora(self, v: Version) -> dict[str, Any]:
        return swap_published(self.config.vllm_lora, self.versions, v)

    # ---- operator metrics and the service loop ----------------------------------------------

    def _log_round(self, outcome: RoundOutcome, seconds: float) -> None:
        stats = self.store.stats()
        row: dict[str, Any] = {"round": outcome.round, "stage": "round", "status": outcome.status,
                               "trajectories": outcome.trajectories, "resumed": outcome.resumed,
                               "version": outcome.version, "current_version": self.versions.current().version,
                               "seconds": round(seconds, 2), "queue_depth": stats["trajectories_unconsumed"],
                               "time": time.time()}
        for name in ("extract", "consolidate", "gate", "publish"):
            marker = read_marker(self.layout.stage_dir(outcome.round, name))
            if marker is not None:
                row[f"seconds_{name}"] = marker.get("seconds")
        if outcome.verdict:
            row["verdict"] = outcome.verdict
        if outcome.error:
            row["error"] = outcome.error
        self.metrics.append(row)

    def run_forever(self) -> int:
        """Rounds until `max_rounds` (0 = forever) or SIGTERM/SIGINT; returns how many rounds ran."""
        self._install_signal_handlers()
        log.info("scheduler running: store %s, versions %s, current %s", self.config.store, self.versions.dir,
                 version_name(self.versions.current().version))
        done = 0
        try:
            while not self._stop_requested:
                if self.run_round() is None:
                    self._wait(self.config.poll_s)
                    continue
                done += 1
                if self.config.max_rounds and done >= self.config.max_rounds:
                    break
        except SchedulerStopped as e:
            log.info("%s; the round resumes on restart", e)
        return done

    def request_stop(self) -> None:
        """Stop between stages (the round stays claimed) or at the end of the current wait.

        Safe from a signal handler, which runs on the main thread between two bytecodes, perhaps
        while that thread holds a lock: a plain assignment takes none (a threading.Event's `set`
        would, and deadlocks when the signal lands inside the Event's own `wait`).
        """
        self._stop_requested = True

    def _wait(self, seconds: float) -> None:
        """Sleep `seconds`, in slices, so that a stop request ends the wait within STOP_CHECK_S."""
        deadline = time.monotonic() + seconds
        while not self._stop_requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(STOP_CHECK_S, left))

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.request_stop())


STOP_CHECK_S = 0.05
"""How often a waiting scheduler looks for a stop request (a signal handler can only set a flag)."""


def status(config: OnlineConfig) -> dict[str, Any]:
    """What an operator asks first: the store's numbers, the current version, the last round row."""
    if not is_url(config.store) and not Path(config.store).is_file():  # a status query must not create an empty store
        raise DataError(f"{config.store}: store not found (the gateway creates it; check `store`)")
    with Store.open(config.store, retention=config.retention) as store:
        stats = store.stats()
    versions = Versions(config.versions.dir)
    current = versions.current().to_dict() if versions.current_file.is_file() else None
    metrics = RunLayout(config.run_dir).metrics_file
    rounds = [row for _, row in iter_jsonl(metrics, complete_lines_only=True) if row.get("stage") == "round"] \
        if metrics.is_file() else []
    return {"store": stats, "current": current, "versions": [v.version for v in versions.list()],
            "last_round": rounds[-1] if rounds else None}
