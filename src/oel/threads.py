"""How many CPU threads the engines use: decided in one place, logged once.

On the 2-core machines oel targets, both torch and llama.cpp run fastest with one thread per
core when they have the machine to themselves, and lose badly when their threads outnumber the
free cores (every parallel region waits for the slowest thread, and llama.cpp's threads spin
while they wait). So the count is the cores this process may run on, unless the user says
otherwise with `OEL_THREADS` (e.g. `OEL_THREADS=1` beside another job).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

THREADS_ENV = "OEL_THREADS"
"""Environment variable that overrides the thread count of every engine."""

_logged: set[int] = set()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cpu_threads() -> int:
    """Threads for torch and llama.cpp: `$OEL_THREADS` if set, else one per usable core."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}: expected a positive integer, got {raw!r}") from None
        if n < 1:
            raise ValueError(f"{THREADS_ENV}: expected a positive integer, got {raw!r}")
        source = THREADS_ENV
    else:
        n, source = usable_cores(), "usable cores"
    if n not in _logged:
        _logged.add(n)
        log.info("CPU threads: %d (%s)", n, source)
    return n


def apply_torch_threads() -> int:
    """Set torch's intra-op threads to `cpu_threads()`; returns the count."""
    import torch

    n = cpu_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
