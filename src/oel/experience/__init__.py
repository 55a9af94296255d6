"""Experiential knowledge: accumulative extraction, the experience store, the in-context curve.

How a round's loop uses it:

    from oel.experience import ExtractConfig, extract_round, knowledge_texts
    cfg = ExtractConfig(out_dir="runs/x/experience", round=r, num_runs=K, num_trajectories=N, use_step=N_use)
    extract_round(cfg, trajectories, policy_backend)        # resumable; writes the store
    texts = knowledge_texts(cfg.out_dir, r)                 # K strings, each e_{N_use} of one run

The consolidation trainer only needs `knowledge_texts`. See docs/experience.md.
"""

from oel.experience.config import ExtractConfig, ExtractorConfig, extraction_seed
from oel.experience.curve import CurveConfig, CurvePoint, evaluate_curve, wilson_interval
from oel.experience.extract import accumulate_step, extract_round, make_extractor
from oel.experience.store import (
    ExperienceFile,
    ExperienceItem,
    ExperienceSet,
    diff_experience,
    format_diff,
    knowledge_texts,
    load_experience_set,
    read_experience,
    step_path,
)
from oel.experience.text import STRUCTURED_MARKER, strip_thinking

__all__ = [
    "ExtractConfig", "ExtractorConfig", "extraction_seed", "accumulate_step", "extract_round", "make_extractor",
    "CurveConfig", "CurvePoint", "evaluate_curve", "wilson_interval",
    "ExperienceFile", "ExperienceItem", "ExperienceSet", "diff_experience", "format_diff",
    "knowledge_texts", "load_experience_set", "read_experience", "step_path",
    "STRUCTURED_MARKER", "strip_thinking",
]
