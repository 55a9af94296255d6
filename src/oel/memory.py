"""Process memory figures that the CLI and the trainer report (one definition for both)."""

from __future__ import annotations

import resource

# getrusage's ru_maxrss is in KiB on Linux; one MiB is this many KiB.
KIB_PER_MIB = 1024


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB: what bounds the machine a run needs."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB
