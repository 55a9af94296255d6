"""The in-context curve: held-out pass rate with the knowledge e_i in the prompt, as i grows.

For each chosen step i the policy plays the same held-out maps with the same sampling
seeds (so the points differ only by the knowledge in the prompt): step 0 uses the plain
policy prompt (`policy_grid_v1`), step i > 0 the teacher prompt (`teacher_grid_v1`) with
e_i. With K accumulation runs, held-out map j is played with run (j mod K)'s knowledge,
so every point averages over the K runs. Each point gets a 95% Wilson interval and the
move quality (share of moves on a shortest path, `oel.evaluate.metrics`), which moves
long before the pass rate does for small models.

Outputs in `out_dir`: `step_III.jsonl` (every episode played, for inspection; reused
when complete, so an interrupted curve resumes per point), `curve.json`, `curve.csv`,
`curve.md` and `curve.png`. Steps whose knowledge is identical (the extractor added nothing
between them) are one measurement with the same seeds: played once, reused.
"""

from __future__ import annotations

from typing import Any
import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from oel.backends.base import ChatBackend, SamplingParams
from oel.backends.select import BackendConfig
from oel.config import Config, cfg, to_dict
from oel.envs import EnvConfig
from oel.envs.seeds import HELDOUT_COUNT, heldout_seeds
from oel.errors import ConfigError
from oel.evaluate.games import play_maps, start_states
from oel.evaluate.metrics import episode_move_marks, move_quality, wilson_interval
from oel.extract import load_experience_set, read_manifest, round_dir
from oel.io import atomic_write_json, atomic_write_text
from oel.prompts import KNOWLEDGE_TEMPLATE, NO_KNOWLEDGE_TEMPLATE
from oel.provenance import plain, read_key, texts_digest
from oel.rollout import EpisodeJob
from oel.trajectory import Trajectory, read_trajectories, write_trajectories

log = logging.getLogger(__name__)

class CurveConfig(Config):
    """`oel experience curve`: which store, which steps, which held-out maps, which policy."""

    store: str = cfg("runs/experience", "the experience store written by `oel extract`")
    round: int = cfg(0, "which round's knowledge")
    steps: list[int] = cfg(help="accumulation steps to evaluate; empty = 0, step_stride, 2*step_stride, ..., N",
                           factory=list)
    step_stride: int = cfg(4, "spacing of the default steps")
    env: EnvConfig = cfg(help="the environment (must match the one the trajectories came from)", factory=EnvConfig)
    num_maps: int = cfg(16, "held-out subset: the FIRST num_maps of the fixed held-out seeds (0..num_maps-1)")
    samples_per_map: int = cfg(1, "episodes per held-out map and step")
    policy: BackendConfig = cfg(help="the model that plays", factory=BackendConfig)
    sampling: SamplingParams = cfg(help="how the policy samples (the same seeds at every step)", factory=SamplingParams)
    batch_size: int = cfg(32, "episodes in flight together")
    out_dir: str = cfg("", "where the table and plot go; '' = STORE/round_RRR/curve")

    def model_post_init(self, context: Any, /) -> None:
        if not 1 <= self.num_maps <= HELDOUT_COUNT:
            raise ConfigError(f"num_maps: must be in 1..{HELDOUT_COUNT}, got {self.num_maps}")
        for name in ("samples_per_map", "step_stride", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if any(s < 0 for s in self.steps):
            raise ConfigError(f"steps: must be >= 0, got {self.steps}")

    def resolved_out_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else round_dir(self.store, self.round) / "curve"


@dataclass(frozen=True)
class CurvePoint:
    """One point of the curve: pass rate with e_step in context."""

    step: int
    episodes: int
    passed: int
    ci_low: float
    ci_high: float
    knowledge_tokens_mean: float
    response_tokens_per_turn: float
    end_reasons: dict[str, int]
    optimal_moves: int = 0
    """Model turns whose move lay on a shortest path to success (move quality, docs/method.md)."""
    scored_moves: int = 0
    """Turns scored for move quality (0 when the environment has no solver)."""

    @property
    def pass_rate(self) -> float:
        return self.passed / self.episodes if self.episodes else 0.0

    @property
    def move_quality(self) -> float | None:
        return self.optimal_moves / self.scored_moves if self.scored_moves else None


def default_steps(num_trajectories: int, stride: int) -> list[int]:
    steps = list(range(0, num_trajectories + 1, stride))
    return steps if steps[-1] == num_trajectories else steps + [num_trajectories]


def _point(step: int, trajs: list[Trajectory], knowledge_tokens: float, starts: dict) -> CurvePoint:
    """Pass rate with its interval, and move quality -- far more sensitive at low pass rates."""

    passed = sum(t.passed for t in trajs)
    turns = sum(len(t.turns) for t in trajs)
    lo, hi = wilson_interval(passed, len(trajs))
    reasons = Counter(str(t.meta.get("end_reason")) for t in trajs)
    quality = move_quality([episode_move_marks(starts[t.seed], t) for t in trajs if t.seed in starts])
    return CurvePoint(step, len(trajs), passed, lo, hi, knowledge_tokens,
                      sum(t.num_response_tokens for t in trajs) / turns if turns else 0.0,
                      dict(sorted(reasons.items())),
                      quality.optimal, quality.moves)


def play_step(config: CurveConfig, backend: ChatBackend, step: int, texts: list[str]) -> list[Trajectory]:
    """Play the held-out subset once per sample with e_step of run (map index mod K) in the prompt
    (the plain policy prompt at step 0), through the evaluation's own `play_maps`."""
    jobs = [[EpisodeJob(s, n) for n in range(config.samples_per_map)] for s in heldout_seeds(config.num_maps)]
    groups: list[str | None] = [None] * len(texts) if step == 0 else list(texts)
    played = play_maps(backend, config.env, jobs, groups, config.sampling, round=config.round,
                       batch_size=config.batch_size)
    return sorted(played, key=lambda t: (t.seed, t.sample))


def _reuse_key(config: CurveConfig, backend: ChatBackend, step: int, texts: list[str]) -> dict:
    """What a point's episodes depend on. Steps whose knowledge is identical (an extractor
    that added nothing new) have the same key: with the same seeds they are the same
    measurement, so it is played once and reused."""
    template = NO_KNOWLEDGE_TEMPLATE if step == 0 else KNOWLEDGE_TEMPLATE
    return {"model": backend.model_id, "template": template,
            "knowledge_sha256": texts_digest(texts),
            "env": to_dict(config.env), "sampling": to_dict(config.sampling), "num_maps": config.num_maps,
            "samples_per_map": config.samples_per_map}


def _played_before(out: Path, key: dict, expected: int) -> list[Trajectory] | None:
    """Episodes of any point in `out` played with exactly this key (resume, or identical knowledge)."""
    for meta in sorted(out.glob("step_*.key.json")):
        played = meta.with_name(meta.name.removesuffix(".key.json") + ".jsonl")
        if played.exists() and read_key(meta) == plain(key):
            trajs = read_trajectories(played)
            if len(trajs) == expected:
                log.info("curve: reusing %s (same model, knowledge, sampling and maps)", played)
                return trajs
    return None


def evaluate_curve(config: CurveConfig, backend: ChatBackend, *, count_tokens: Callable[[str], int] | None = None,
                   on_point: Callable[[CurvePoint], None] | None = None) -> list[CurvePoint]:
    """Evaluate every chosen step (resuming points already played) and write the table and plot."""
    manifest = read_manifest(config.store, config.round)
    steps = sorted(set(config.steps)) or default_steps(manifest.num_trajectories, config.step_stride)
    if steps[-1] > manifest.num_trajectories:
        raise ConfigError(f"steps: {steps[-1]} is past the store's last step {manifest.num_trajectories}")
    out = config.resolved_out_dir()
    expected = config.num_maps * config.samples_per_map
    starts = start_states(config.env, heldout_seeds(config.num_maps))
    points: list[CurvePoint] = []
    for step in steps:
        texts = load_experience_set(config.store, config.round, step).texts
        path = out / f"step_{step:03d}.jsonl"
        key = _reuse_key(config, backend, step, texts)
        trajs = _played_before(out, key, expected)
        if trajs is None:
            trajs = play_step(config, backend, step, texts)
        write_trajectories(path, trajs)
        atomic_write_json(path.with_suffix(".key.json"), key)
        tokens = [count_tokens(t) for t in texts] if count_tokens else [0]
        points.append(_point(step, trajs, sum(tokens) / len(tokens), starts))
        log.info("curve step %d: %d/%d passed", step, points[-1].passed, points[-1].episodes)
        if on_point:
            on_point(points[-1])
    write_curve(out, points, config)
    return points


def curve_table(points: list[CurvePoint]) -> str:
    """The markdown table of the curve."""
    lines = ["| step i | pass rate | 95% CI (Wilson) | passed/episodes | move quality | knowledge tokens | tokens/turn "
             "| how episodes ended |", "|---:|---:|---|---:|---:|---:|---:|---|"]
    for p in points:
        ends = ", ".join(f"{k} {v}" for k, v in p.end_reasons.items())
        quality = f"{p.move_quality:.0%} ({p.optimal_moves}/{p.scored_moves})" if p.move_quality is not None else "-"
        lines.append(f"| {p.step} | {p.pass_rate:.1%} | {p.ci_low:.1%} - {p.ci_high:.1%} | {p.passed}/{p.episodes} "
                     f"| {quality} | {p.knowledge_tokens_mean:.0f} | {p.response_tokens_per_turn:.1f} | {ends} |")
    return "\n".join(lines)


def write_curve(out: Path, points: list[CurvePoint], config: CurveConfig) -> None:
    """curve.json (points + config), curve.csv, curve.md, curve.png."""
    rows = [{**asdict(p), "pass_rate": p.pass_rate, "move_quality": p.move_quality} for p in points]
    atomic_write_json(out / "curve.json", {"points": rows, "config": to_dict(config)})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["step", "episodes", "passed", "pass_rate", "ci_low", "ci_high", "optimal_moves", "scored_moves",
                     "knowledge_tokens_mean", "response_tokens_per_turn", "end_reasons"])
    for p in points:
        writer.writerow([p.step, p.episodes, p.passed, f"{p.pass_rate:.4f}", f"{p.ci_low:.4f}", f"{p.ci_high:.4f}",
                         p.optimal_moves, p.scored_moves, f"{p.knowledge_tokens_mean:.1f}",
                         f"{p.response_tokens_per_turn:.2f}", json.dumps(p.end_reasons)])
    atomic_write_text(out / "curve.csv", buf.getvalue())
    maps = f"held-out maps 0..{config.num_maps - 1} x {config.samples_per_map} sample(s)"
    atomic_write_text(out / "curve.md", f"In-context curve, round {config.round}, {config.env.game}, {maps}\n\n"
                      + curve_table(points) + "\n")
    plot_curve(out / "curve.png", points, title=f"{config.env.game}: pass rate with e_i in context ({maps})")


def plot_curve(path: Path, points: list[CurvePoint], *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.step for p in points]
    ys = [100 * p.pass_rate for p in points]
    err = [[100 * (p.pass_rate - p.ci_low) for p in points], [100 * (p.ci_high - p.pass_rate) for p in points]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4)
    ax.set_xlabel("accumulation step i (trajectories read)")
    ax.set_ylabel("held-out pass rate, % (95% Wilson CI)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
