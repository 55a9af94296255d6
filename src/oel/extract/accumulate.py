"""Accumulative extraction: K runs, each reading N trajectories in order, e_i = e_{i-1} + new items.

At step i, run k shows the extractor trajectory i and its own knowledge e_{i-1}, keeps the
1-2 new items it writes (thinking removed, format-filtered, exact repeats dropped; with
`grounded_numbers`, items stating a number the prompt never showed dropped too), then
enforces the L-token budget by keeping the newest whole items. Each step is written to the
store before the next begins, so a killed run resumes at its last completed step.

The K runs are independent but advance in lockstep: step i of every run that is at step i
is one batched generation, each row with its own seed (via the backend's `generate_rows`
when it has one, else one `chat` call per run), so a resumed run samples exactly what an
uninterrupted one would have.

The raw-trajectories baseline goes through the same loop with the generation replaced by
a compact rendering of the trajectory itself: same budget, same store, same downstream use.

Which words the extractor reads (a grid game's or any task's) and which template it gets are
decided once per round from the trajectories (`oel.extract.templates`), and recorded.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from oel import progress, prompts
from oel.backends.base import ChatBackend, Generation, SamplingParams
from oel.config import merged, to_dict, updated
from oel.errors import ConfigError, DataError
from oel.extract.config import ExtractCommandConfig, ExtractConfig, ExtractInputs, extraction_seed
from oel.extract.render import (
    ExtractionPrompt,
    build_extraction_prompt,
    render_raw_trajectory,
)
from oel.extract.store import (
    ITEM_SEPARATOR,
    ExperienceFile,
    ExperienceItem,
    ExperienceSet,
    RoundManifest,
    StepRecord,
    last_step,
    load_experience_set,
    manifest_path,
    read_manifest,
    render_knowledge,
    round_dir,
    write_manifest,
    write_step,
)
from oel.extract.templates import RecordStyle, extraction_template, round_style
from oel.extract.text import (
    TokenCounter,
    dedup_new,
    fit_newest,
    parse_items,
    split_grounded,
    strip_thinking,
    token_counter,
)
from oel.provenance import refuse_if_different
from oel.trajectory import Message, Trajectory

log = logging.getLogger(__name__)

RAW_EXTRACTOR_ID = "none"
"""extractor_model recorded for the raw-trajectories baseline (nothing was generated)."""

StepCallback = Callable[[int, int, float], None]
"""on_step(run, step, seconds): called after each completed step (the CLI drives its bar with it)."""


@dataclass(frozen=True)
class Extraction:
    """One generated answer for one run at one step, with what its prompt cost."""

    text: str
    prompt: ExtractionPrompt | None
    output_tokens: int
    sampling_seed: int | None
    finish_reason: str = "stop"


def drop_unfinished_line(answer: str, finish_reason: str) -> tuple[str, str]:
    """(answer, dropped): when generation hit the token limit, its last line is cut mid-item.

    A half-written lesson ("- EXPERIENCE ITEM: The agent must always move the") is worse
    than none, so the last line of a length-capped answer is dropped (and recorded).
    """
    if finish_reason != "length":
        return answer, ""
    head, _, last = answer.rstrip("\n").rpartition("\n")
    return head, last.strip()


def accumulate_step(prev: ExperienceFile, traj: Trajectory, extraction: Extraction, *, config: ExtractConfig,
                    count: TokenCounter, extractor_model: str, seconds: float = 0.0) -> ExperienceFile:
    """e_i from e_{i-1} and the extractor's answer: filter, dedup, append, enforce the budget."""
    step = prev.step + 1
    unfinished = ""
    if config.kind == "raw_trajectories":
        candidates = [extraction.text]
    else:
        answer, unfinished = drop_unfinished_line(strip_thinking(extraction.text), extraction.finish_reason)
        candidates = parse_items(answer, config.format)
    ungrounded: list[str] = []
    if config.grounded_numbers and extraction.prompt is not None:
        candidates, ungrounded = split_grounded(candidates, extraction.prompt.text)
    kept, duplicates = dedup_new(prev.texts, candidates,
                                 near=config.near_duplicate if config.kind == "extracted" else 0.0)
    # The cap counts NEW items only: small models often copy the list back before adding one.
    cap = config.max_new_items if (config.kind == "extracted" and config.format == "structured") else 0
    kept, over_cap = (kept[:cap], kept[cap:]) if cap else (kept, [])
    new_items = [
        ExperienceItem(id=f"r{prev.round}-k{prev.seed}-s{step}-{j}", text=t, step_added=step,
                       source_trajectory_id=traj.id, seed=prev.seed, round=prev.round,
                       extractor_model=extractor_model)
        for j, t in enumerate(kept)
    ]
    items = list(prev.items) + new_items
    kept_idx = fit_newest([it.text for it in items], config.budget_tokens, count, ITEM_SEPARATOR[config.kind])
    budget_dropped = len(items) - len(kept_idx)
    items = [items[i] for i in kept_idx]
    p = extraction.prompt
    record = StepRecord(
        trajectory_id=traj.id,
        raw_output=extraction.text if config.kind == "extracted" else "",
        new_items=kept, duplicates_dropped=duplicates, over_cap_dropped=over_cap, ungrounded_dropped=ungrounded,
        unfinished_dropped=unfinished,
        budget_dropped=budget_dropped,
        input_tokens=p.input_tokens if p else 0, output_tokens=extraction.output_tokens,
        input_truncated=bool(p and p.truncated), dropped_turns=p.dropped_turns if p else 0,
        cut_chars=p.cut_chars if p else 0, sampling_seed=extraction.sampling_seed, seconds=round(seconds, 3),
    )
    return prev.model_copy(update={
        "step": step, "items": items, "record": record,
        "rendered": render_knowledge([it.text for it in items], config.kind),
    })


def empty_step(config: ExtractConfig, round: int, run: int, *, extractor_model: str,
               prompt_record: dict[str, str] | None, counter_name: str) -> ExperienceFile:
    """e_0: no knowledge yet (also the point 'no knowledge' of the in-context curve)."""
    return ExperienceFile(
        kind=config.kind, round=round, seed=run,
        sampling_seed=extraction_seed(config.seed, round, run, 0), step=0, format=config.format,
        extractor_model=extractor_model, prompt=prompt_record, budget_tokens=config.budget_tokens,
        token_counter=counter_name, items=[], rendered="", record=None,
    )


def _fingerprint(config: ExtractConfig, extractor_model: str, prompt_record: dict | None, counter: str) -> dict:
    """Settings that determine the knowledge: resuming with any of them changed is refused."""
    return {
        "kind": config.kind, "format": config.format, "budget_tokens": config.budget_tokens,
        "max_input_tokens": config.max_input_tokens, "max_new_items": config.max_new_items,
        **({"near_duplicate": config.near_duplicate} if config.near_duplicate else {}),
        **({"record": config.record} if config.record != "full" else {}),
        **({"grounded_numbers": True} if config.grounded_numbers else {}),
        "strip_trajectory_thinking": config.strip_trajectory_thinking, "seed": config.seed,
        "extractor_model": extractor_model, "prompt": prompt_record, "token_counter": counter,
        "sampling": to_dict(updated(config.sampling, seed=0)),
    }


def _prepare_round(config: ExtractConfig, inputs: ExtractInputs, trajs: Sequence[Trajectory],
                   fingerprint: dict) -> None:
    """Write the round manifest, or check an existing one matches (resume) unless overwriting.
    The manifest records the settings with the inputs, as `oel extract`'s config dumps them."""
    ids = [t.id for t in trajs]
    store, r = inputs.out_dir, inputs.round
    if inputs.overwrite and round_dir(store, r).exists():
        shutil.rmtree(round_dir(store, r))
    if manifest_path(store, r).exists():
        old = read_manifest(store, r)
        refuse_if_different(old.fingerprint, fingerprint, where=str(manifest_path(store, r)),
                            hint="set overwrite=true or use another out_dir")
        if old.trajectory_ids[: len(ids)] != ids[: len(old.trajectory_ids)]:
            raise ConfigError(f"trajectories: {inputs.trajectories or 'the given trajectories'} differ from those this "
                              f"round's store was built from; set overwrite=true or use another out_dir")
    manifest = RoundManifest(round=r, num_runs=config.num_runs, num_trajectories=len(trajs),
                             use_step=config.resolved_use_step, fingerprint=fingerprint, trajectory_ids=ids,
                             config=merged(config, inputs, ExtractCommandConfig))
    write_manifest(store, manifest)


def _generate(backend: ChatBackend, prompts_: list[ExtractionPrompt], seeds: list[int],
              params: SamplingParams) -> list[Generation]:
    """One generation per prompt, row r sampled with seeds[r] whatever else shares the batch.

    Uses the backend's `chat_with_seeds` (one batched call, per-row seeds: the same
    convention as collection) when it has one; otherwise one `chat` call per run.
    """
    chats = [[Message(role="user", content=p.text)] for p in prompts_]
    chat_with_seeds = getattr(backend, "chat_with_seeds", None)
    if chat_with_seeds is not None:
        return list(chat_with_seeds(chats, params, seeds))
    return [backend.chat([c], updated(params, seed=s))[0] for c, s in zip(chats, seeds)]


def extract_round(config: ExtractConfig, trajectories: Sequence[Trajectory], backend: ChatBackend | None, *,
                  store: str | os.PathLike[str], round: int = 0, overwrite: bool = False, source: str = "",
                  tokenizer: object | None = None, on_step: StepCallback | None = None) -> ExperienceSet:
    """Run (or resume) the K accumulations of one round; return the K texts at step N_use.

    `backend` is the extractor (None only for the raw-trajectories baseline). Token counts
    use `backend.tokenizer` if it has one, else `tokenizer`, else the approximation.
    `store`: the experience store (this round goes to `store/round_RRR/`); `round`: the OEL
    round (its sampling seeds; recorded in every item); `overwrite`: delete the round's store
    first instead of resuming; `source`: the file the trajectories were read from (messages and
    the manifest's record).
    """
    inputs = ExtractInputs(trajectories=source, out_dir=os.fspath(store), round=round, overwrite=overwrite)
    if len(trajectories) < config.num_trajectories:
        raise DataError(f"{source or 'trajectories'}: need num_trajectories={config.num_trajectories}, "
                        f"found {len(trajectories)}")
    trajs = list(trajectories[: config.num_trajectories])
    if config.kind == "extracted" and backend is None:
        raise ConfigError("extractor: kind=extracted needs an extractor backend")
    backend_tokenizer = getattr(backend, "tokenizer", None)
    count = token_counter(backend_tokenizer if backend_tokenizer is not None else tokenizer)
    style = round_style(trajs)
    template = extraction_template(config.prompt, config.format, style) if config.kind == "extracted" else None
    prompt_record = template.record() if template else prompts.get(style.raw_template).record()
    log.info("extract round %d: %s trajectories, prompt %s (sha256 %s)", round, style.name,
             prompt_record["name"], prompt_record["sha256"])
    model_id = backend.model_id if (backend is not None and config.kind == "extracted") else RAW_EXTRACTOR_ID
    _prepare_round(config, inputs, trajs, _fingerprint(config, model_id, prompt_record, count.name))

    states: list[ExperienceFile] = []
    for k in range(config.num_runs):
        state = last_step(store, round, k)
        if state is None:
            state = empty_step(config, round, k, extractor_model=model_id, prompt_record=prompt_record,
                               counter_name=count.name)
            write_step(store, state)
        elif state.step > 0:
            log.info("round %d run %d: resuming after step %d", round, k, state.step)
        states.append(state)

    with progress.task(f"extract round {round}: steps of {config.num_runs} runs",
                       total=config.num_runs * len(trajs)) as counted:
        counted.done = sum(st.step for st in states)
        for i in range(1, len(trajs) + 1):
            pending = [k for k in range(config.num_runs) if states[k].step == i - 1]
            if not pending:
                continue
            traj = trajs[i - 1]
            t0 = time.perf_counter()
            extractions = _extract_many(config, round, backend, template, [states[k] for k in pending], traj, count, i,
                                        style)
            per_run = (time.perf_counter() - t0) / len(pending)
            for k, ex in zip(pending, extractions):
                states[k] = accumulate_step(states[k], traj, ex, config=config, count=count,
                                            extractor_model=model_id, seconds=per_run)
                write_step(store, states[k])
                progress.advance(counted)
                if on_step:
                    on_step(k, i, per_run)
    return load_experience_set(store, round, config.resolved_use_step)


def extract_command(command: ExtractCommandConfig, trajectories: Sequence[Trajectory], backend: ChatBackend | None,
                    *, tokenizer: object | None = None, on_step: StepCallback | None = None) -> ExperienceSet:
    """`extract_round` as `oel extract` calls it: the command's keys as the settings and the arguments."""
    return extract_round(command.settings(), trajectories, backend, store=command.out_dir, round=command.round,
                         overwrite=command.overwrite, source=command.trajectories, tokenizer=tokenizer,
                         on_step=on_step)


def _extract_many(config: ExtractConfig, round: int, backend: ChatBackend | None, template: prompts.Template | None,
                  prevs: list[ExperienceFile], traj: Trajectory, count: TokenCounter, step: int,
                  style: RecordStyle) -> list[Extraction]:
    """The answers of the pending runs at `step` (a rendering of the game for the raw baseline)."""
    if config.kind == "raw_trajectories":
        raw = render_raw_trajectory(traj, strip_response_thinking=config.strip_trajectory_thinking, style=style)
        return [Extraction(raw, None, 0, None) for _ in prevs]
    assert backend is not None and template is not None
    built = [build_extraction_prompt(template, p.rendered, traj, count=count, max_input_tokens=config.max_input_tokens,
                                     strip_response_thinking=config.strip_trajectory_thinking, style=style,
                                     record=config.record)
             for p in prevs]
    for p in built:
        if p.truncated:
            log.warning("trajectory %s: extractor input cut from the left (%d oldest turns, %d chars) to fit "
                        "max_input_tokens=%d", traj.id, p.dropped_turns, p.cut_chars, config.max_input_tokens)
    seeds = [extraction_seed(config.seed, round, prev.seed, step) for prev in prevs]
    gens = _generate(backend, built, seeds, config.sampling)
    if len(gens) != len(built):
        raise DataError(f"extractor {backend.model_id}: returned {len(gens)} answers for {len(built)} prompts")
    return [Extraction(g.text, p, g.completion_tokens, s, g.finish_reason) for g, p, s in zip(gens, built, seeds)]
