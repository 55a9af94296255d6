"""Model load time and peak memory: first load (assemble, verify, dequantise, cache) vs cached load.

    python benchmarks/model_load.py [PRESET] [--repeats 3]

Each load runs in a fresh subprocess so that peak RSS and import costs are honest. The first
load uses an empty temporary cache directory; the second reads what the first wrote.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_smoke_flag, smoke_model  # noqa: E402

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from oel.models import ModelConfig, load_model
lm = load_model(ModelConfig(name=sys.argv[1], cache_dir=sys.argv[2]))
total = time.perf_counter() - t0
print(json.dumps({"load_s": lm.load_seconds, "with_imports_s": total, "cache_hit": lm.cache_hit,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def load_once(name: str, cache_dir: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, name, cache_dir], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", nargs="?", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--repeats", type=int, default=3, help="cached loads to take the median of")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.name, args.repeats = smoke_model(), 1
    with tempfile.TemporaryDirectory(prefix="oel-bench-cache-") as cache:
        first = load_once(args.name, cache)
        cached = sorted((load_once(args.name, cache) for _ in range(args.repeats)), key=lambda r: r["load_s"])
        med = cached[len(cached) // 2]
    print(f"{args.name}")
    print(f"  first load : {first['load_s']:6.1f} s  (with imports {first['with_imports_s']:.1f} s), peak RSS "
          f"{first['peak_rss_mib']:.0f} MiB")
    print(f"  cached load: {med['load_s']:6.1f} s  (with imports {med['with_imports_s']:.1f} s), peak RSS "
          f"{med['peak_rss_mib']:.0f} MiB"
          f"  [median of {len(cached)}]")
    print(f"  speed-up   : {first['load_s'] / med['load_s']:.1f}x")


if __name__ == "__main__":
    main()
