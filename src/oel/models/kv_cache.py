"""The name of the KV-cache argument, for the transformers versions oel supports.

transformers 5.24 renamed `past_key_values` to `cache`, in the models' `forward`, in
`generate` and in the outputs; the old name still works but warns on every call. Models
are called with whichever name the installed transformers uses, so a run prints no
deprecation warnings on new versions and keeps working on the older ones pyproject allows.
"""

from __future__ import annotations

from typing import Any

from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_KWARG = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
"""`cache` (transformers >= 5.24) or `past_key_values` (earlier)."""


def cache_arg(cache: Any) -> dict[str, Any]:
    """`model(..., **cache_arg(cache))`: the cache under the installed version's name."""
    return {CACHE_KWARG: cache}


def output_cache(output: Any) -> Any:
    """The cache a forward pass returned (`output.cache`, or `output.past_key_values` before 5.24)."""
    return getattr(output, CACHE_KWARG)
