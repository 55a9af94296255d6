"""`oel online demo`: the online mode end to end on one machine, with simulated users.

Three parts run as they would in a deployment, talking only over loopback HTTP and files:

* the gateway (in this process): serves the current version, records every exchange;
* the scheduler (`oel online run`, a child process): a round whenever `online.min_trajectories`
  new episodes are stored, then the new version published through `versions/current.json`,
  which the gateway hot-swaps;
* `users` simulated agents (threads): each plays FrozenLake/Sokoban episodes on training maps,
  one chat request per turn with its own `X-OEL-Session`, and ends the session with the
  game's outcome text (and the pass flag, which only evaluation reads).

Every episode is logged to `users.jsonl` with the version that answered each of its turns;
`oel report RUN_DIR` turns that, the scheduler's metrics and the versions into a report. The
users' seeds continue from `users.jsonl` on a rerun, and the store and scheduler resume by
themselves, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from oel import prompts
from oel.config import Config, cfg, save_config, updated
from oel.envs import EnvConfig, make_env
from oel.envs.seeds import TRAIN_BASE
from oel.io import append_jsonl, iter_jsonl
from oel.layout import METRICS_FILE, DemoLayout
from oel.online.config import OnlineConfig
from oel.online.gateway import Gateway, GatewayConfig
from oel.online.versions import Versions

log = logging.getLogger(__name__)

SCHEDULER_CONFIG = "scheduler.yaml"
SCHEDULER_LOG = "scheduler.log"
DEMO_CONFIG = "demo.config.yaml"
DEMO_SEED_BASE = TRAIN_BASE + 900_000
"""The users' maps: training seeds no `oel loop` round uses, never the held-out ones."""
SESSION_HEADER, VERSION_HEADER = "X-OEL-Session", "X-OEL-Model-Version"
USER_TIMEOUT_S = 600.0
SCHEDULER_STOP_S = 120.0
POLL_S = 2.0
SWAP_WAIT_S = 120.0
"""How long the gateway may take to load and switch to a newly published version."""


class DemoConfig(Config):
    """What the demo runs: the simulated users, how long, and the scheduler's settings."""

    run_dir: str = cfg("runs/online-demo", "store.sqlite, versions/, scheduler/, users.jsonl, the report")
    users: int = cfg(4, "simulated agents playing at once through the gateway")
    max_episodes: int = cfg(64, "episodes the users play at most (all runs of the demo together)")
    rounds: int = cfg(2, "stop once this many rounds have ended, counting those of earlier runs in the same run_dir")
    timeout_minutes: float = cfg(45.0, "stop after this long whatever happened")
    temperature: float = cfg(0.7, "the users' sampling temperature")
    top_p: float = cfg(0.8, "the users' nucleus mass")
    top_k: int = cfg(20, "the users' top_k (an extension vLLM and oel accept)")
    max_tokens: int = cfg(48, "the users' max_tokens per turn")
    env: EnvConfig = cfg(factory=EnvConfig, help="the game the users play")
    online: OnlineConfig = cfg(factory=OnlineConfig, help="the scheduler (store, run_dir and versions.dir are set "
                                                          "inside run_dir; max_rounds = rounds)")


def scheduler_config(config: DemoConfig, rounds_ended: int = 0) -> OnlineConfig:
    """The scheduler's config with every path inside the demo's run dir, and the rounds still to run."""
    paths = DemoLayout(Path(config.run_dir))
    return updated(config.online, store=str(paths.store), run_dir=str(paths.scheduler), env=config.env,
                               max_rounds=max(config.rounds - rounds_ended, 0),
                               versions=updated(config.online.versions, dir=str(paths.versions)))


def rounds_ended(paths: DemoLayout) -> int:
    """Rounds an earlier run of the demo finished (the scheduler's metrics.jsonl has one row each)."""
    metrics = paths.scheduler / METRICS_FILE
    if not metrics.is_file():
        return 0
    return sum(1 for _, row in iter_jsonl(metrics, complete_lines_only=True)
               if row.get("stage") == "round" and row.get("status") != "failed")


class SimulatedUsers:
    """`n` agents, each a thread playing episodes through the gateway until told to stop."""

    def __init__(self, config: DemoConfig, url: str, keys: list[str]) -> None:
        self.config, self.url, self.keys = config, url.rstrip("/"), keys
        self.paths = DemoLayout(Path(config.run_dir))
        self._next = sum(1 for _ in iter_jsonl(self.paths.users)) if self.paths.users.is_file() else 0
        self._lock = threading.Lock()
        self.limit = config.max_episodes
        self.stop = threading.Event()
        self.errors: list[str] = []

    def finish_after(self, more: int) -> None:
        """Let the users play exactly `more` episodes from now on, then stop (the episodes after the
        last swap; past max_episodes if the users had already played them all)."""
        with self._lock:
            self.limit = self._next + more

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.limit or self.stop.is_set():
                return None
            self._next += 1
            return self._next - 1

    def run(self, i: int) -> None:
        env = make_env(self.config.env)
        while (episode := self._take()) is not None:
            try:
                append_jsonl(self.paths.users, self.play(env, i, episode))
            except Exception as e:  # noqa: BLE001 - a user that fails is reported, the demo goes on
                log.warning("user %d episode %d: %s", i, episode, e)
                self.errors.append(f"{type(e).__name__}: {e}")

    def play(self, env: Any, user: int, episode: int) -> dict[str, Any]:
        seed, session = DEMO_SEED_BASE + episode, f"demo-{episode:05d}-{secrets.token_hex(4)}"
        t0, observation, versions, responses = time.time(), env.reset(DEMO_SEED_BASE + episode), [], []
        while True:
            messages = [m.model_dump() for m in prompts.turn_messages(prompts.POLICY_TEMPLATE, observation)]
            body = {"model": "oel", "messages": messages, "temperature": self.config.temperature,
                    "top_p": self.config.top_p, "top_k": self.config.top_k, "max_tokens": self.config.max_tokens,
                    "seed": seed * 100 + len(versions)}
            answer, headers = self._post("/chat/completions", body, user, session)
            versions.append(int(headers.get(VERSION_HEADER.lower(), -1)))
            responses.append(answer["choices"][0]["message"]["content"])
            step = env.step(responses[-1])
            if step.done:
                break
            observation = step.observation
        self._post(f"/sessions/{session}/end", {"outcome": step.outcome, "passed": step.passed,
                                                "env_id": env.env_id}, user, session)
        return {"episode": episode, "user": user, "seed": seed, "session": session, "passed": step.passed,
                "turns": len(versions), "versions": versions, "responses": responses, "start": t0, "end": time.time()}

    def _post(self, path: str, body: dict[str, Any], user: int, session: str) -> tuple[dict[str, Any], dict[str, str]]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.keys[user]}", SESSION_HEADER: session})
        with urllib.request.urlopen(req, timeout=USER_TIMEOUT_S) as resp:
            # Header names are case-insensitive (the gateway, on ASGI, sends them in lower case).
            return json.loads(resp.read() or b"{}"), {k.lower(): v for k, v in resp.headers.items()}


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the gateway, the scheduler and the users until `rounds` rounds ended (or time/episodes ran out)."""
    paths = DemoLayout(Path(config.run_dir))
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, paths.run_dir / DEMO_CONFIG)
    ended = rounds_ended(paths)
    online = scheduler_config(config, ended)
    if online.max_rounds:  # (0 would mean "run for ever" to `oel online run`)
        save_config(online, paths.run_dir / SCHEDULER_CONFIG)
    Versions(paths.versions).ensure_base(online.model.name)
    keys = [secrets.token_urlsafe(32) for _ in range(config.users)]
    gw_config = GatewayConfig(store=str(paths.store), port=0, model=online.model, versions_dir=str(paths.versions),
                              api_keys=[f"sim-user-{i}:{k}" for i, k in enumerate(keys)],
                              max_batch_size=max(config.users, 1))
    _exit_on_sigterm()
    t0 = time.time()
    with Gateway(gw_config) as gateway:
        if online.max_rounds:
            scheduler = _start_scheduler(paths)
        else:
            log.info("%d round(s) ended in earlier runs (rounds=%d): no scheduler this time", ended, config.rounds)
            scheduler = None
        users = SimulatedUsers(config, gateway.url, keys)
        if scheduler is None:
            users.finish_after(config.users)  # one episode each, on the version served
        threads = [_start_user(users, i) for i in range(config.users)]
        try:
            if _wait(config, scheduler, threads, t0):
                if scheduler is not None:
                    _await_swap(gateway, paths.versions, deadline=time.time() + SWAP_WAIT_S)
                    users.finish_after(config.users)  # one more episode each, on the version now served
                    threads = [t if t.is_alive() else _start_user(users, i) for i, t in enumerate(threads)]
                for t in threads:
                    t.join(timeout=USER_TIMEOUT_S)
        finally:
            users.stop.set()
            for t in threads:
                t.join(timeout=USER_TIMEOUT_S)
            _stop_scheduler(scheduler)
    summary = {"wall_s": round(time.time() - t0, 1), "user_errors": users.errors,
               "versions": [v.version for v in Versions(paths.versions).list()],
               "current": Versions(paths.versions).current().version}
    log.info("demo finished: %s", summary)
    return summary


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the users and the scheduler child are stopped, not orphaned."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _start_user(users: SimulatedUsers, i: int) -> threading.Thread:
    t = threading.Thread(target=users.run, args=(i,), name=f"sim-user-{i}", daemon=True)
    t.start()
    return t


def _start_scheduler(paths: DemoLayout) -> subprocess.Popen[bytes]:
    logf = open(paths.run_dir / SCHEDULER_LOG, "ab")  # noqa: SIM115 - the child owns it until it exits
    return subprocess.Popen([sys.executable, "-m", "oel", "online", "run", str(paths.run_dir / SCHEDULER_CONFIG)],
                            stdout=logf, stderr=subprocess.STDOUT)


def _stop_scheduler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=SCHEDULER_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(config: DemoConfig, scheduler: subprocess.Popen[bytes] | None, threads: list[threading.Thread],
          t0: float) -> bool:
    """Until the scheduler has run its rounds (it exits at max_rounds: True) or time is up. Users that
    played all `max_episodes` stop; the scheduler goes on with what they left in the store."""
    if scheduler is None:
        return True
    deadline, users_done = t0 + config.timeout_minutes * 60, False
    while time.time() < deadline:
        if scheduler.poll() is not None:
            log.info("scheduler exited with code %s", scheduler.returncode)
            return scheduler.returncode == 0
        if not users_done and not any(t.is_alive() for t in threads):
            log.info("the users played all %d episodes; waiting for the scheduler", config.max_episodes)
            users_done = True
        time.sleep(POLL_S)
    log.warning("demo timed out after %.0f minutes", config.timeout_minutes)
    return False


def _await_swap(gateway: Any, versions_dir: Path, *, deadline: float) -> None:
    """Until the gateway serves the version current.json names (it polls the file)."""
    want = Versions(versions_dir).current().version
    while gateway.version != want and time.time() < deadline:
        time.sleep(POLL_S / 4)
    log.info("gateway serves version %d (current: %d)", gateway.version, want)
