"""The extract stage: accumulative extraction of experiential knowledge, and the experience store.

(The in-context curve, an evaluation of the store, is `oel.evaluate.curve`.)

How a round's loop uses it:

    from oel.extract import ExtractConfig, extract_round, knowledge_texts
    cfg = ExtractConfig(num_runs=K, num_trajectories=N, use_step=N_use)
    extract_round(cfg, trajectories, policy_backend, store="runs/x/experience", round=r)  # resumable
    texts = knowledge_texts("runs/x/experience", r)         # K strings, each e_{N_use} of one run

The consolidation trainer only needs `knowledge_texts`. See docs/experience.md.
"""

from oel.extract.accumulate import accumulate_step, extract_command, extract_round
from oel.extract.config import ExtractCommandConfig, ExtractConfig, ExtractorConfig, extraction_seed
from oel.extract.store import (
    ExperienceFile,
    ExperienceItem,
    ExperienceSet,
    diff_experience,
    format_diff,
    knowledge_texts,
    load_experience_set,
    read_experience,
    read_manifest,
    round_dir,
    step_path,
)
from oel.extract.text import STRUCTURED_MARKER, strip_thinking

__all__ = [
    "ExtractCommandConfig", "ExtractConfig", "ExtractorConfig", "extraction_seed", "accumulate_step",
    "extract_command", "extract_round",
    "ExperienceFile", "ExperienceItem", "ExperienceSet", "diff_experience", "format_diff",
    "knowledge_texts", "load_experience_set", "read_experience", "read_manifest", "round_dir", "step_path",
    "STRUCTURED_MARKER", "strip_thinking",
]
