"""The OEL loop: rounds of collect -> extract -> consolidate with evaluation, resumable.

    from oel.config import load_config
    from oel.loop import LoopConfig, run_loop
    run_loop(load_config(LoopConfig, "configs/quickstart.yaml"))
"""

from oel.loop.config import LoopConfig
from oel.loop.run import run_loop

__all__ = ["LoopConfig", "run_loop"]
