"""`oel import-logs` on a large generated log: is memory bounded, and how long does it take?

    python benchmarks/import_logs.py [--lines 200000] [--format litellm] [--turns 4]

Writes a LiteLLM (or openai) log of `--lines` records to a temp dir, streamed (the generator
never holds the file), as conversations of `--turns` calls with no session id (the worst
case: every call goes through the stitching index), then, each in a fresh process, reads it
with `json.loads` alone (the baseline: what any reader of the file pays) and imports it with
`oel import-logs`, and prints the wall time and peak RSS of both, their ratio, and the targets
(a 200k-line import under 60 s and 150 MiB peak RSS on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_smoke_flag, emit, run_child  # noqa: E402

SMOKE_LINES = 20
SYSTEM = {"role": "system", "content": "You are a shell helper. Answer with one command."}


def write_log(path: Path, lines: int, turns: int, fmt: str) -> None:
    """`lines` records: conversation c, call k sends the first k exchanges plus a new question."""
    with path.open("w") as f:
        for i in range(lines):
            conv, k = divmod(i, turns)
            messages = [SYSTEM]
            for j in range(k + 1):
                messages.append({"role": "user", "content": f"task {conv}: step {j}, list the files of "
                                                            f"/srv/{conv}/{j}"})
                if j < k:
                    messages.append({"role": "assistant", "content": f"ls -la /srv/{conv}/{j}"})
            answer = f"ls -la /srv/{conv}/{k}"
            if fmt == "litellm":
                # LiteLLM's trace_id for a caller that gave no session: a fresh UUID4 per request.
                record = {"id": f"chatcmpl-{i}", "trace_id": str(uuid.UUID(int=i, version=4)),
                          "call_type": "acompletion",
                          "status": "success", "startTime": 1733470000.0 + i, "model": "gpt-4o-mini",
                          "prompt_tokens": 30 * (k + 1), "completion_tokens": 8, "metadata": {},
                          "messages": messages,
                          "response": {"choices": [{"message": {"role": "assistant", "content": answer}}]}}
            else:
                record = {"messages": [*messages, {"role": "assistant", "content": answer}]}
            f.write(json.dumps(record) + "\n")


TARGET_SECONDS, TARGET_PEAK_MIB, TARGET_LINES = 60.0, 150.0, 200_000


def child(src: str, out: str) -> None:
    from oel.memory import peak_rss_mib

    t0 = time.perf_counter()
    if out == "-":  # the baseline: every line parsed, nothing else
        with open(src, "rb") as f:
            n = sum(1 for line in f if json.loads(line))
        emit({"seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib(), "trajectories": 0, "calls": n})
        return
    from oel.collect.importers import import_logs

    report = import_logs(src, out)
    emit({"seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib(), "trajectories": report.trajectories,
          "calls": report.calls})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--format", choices=("litellm", "openai"), default="litellm")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    add_smoke_flag(ap)
    ns = ap.parse_args()
    if ns.child:
        child(*ns.child)
        return
    if ns.smoke:
        ns.lines = SMOKE_LINES
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "log.jsonl", Path(tmp) / "traj.jsonl"
        write_log(src, ns.lines, ns.turns, ns.format)
        mib = os.path.getsize(src) / 2**20
        read = run_child(__file__, ["--child", str(src), "-"])
        imp = run_child(__file__, ["--child", str(src), str(out)])
        print(f"{ns.lines:>7} lines ({mib:.0f} MiB {ns.format}), {imp['trajectories']} trajectories from "
              f"{imp['calls']} calls [load avg {os.getloadavg()[0]:.2f}]")
        print(f"  json.loads alone: {read['seconds']:.1f} s, peak RSS {read['peak_rss_mib']:.0f} MiB")
        print(f"  oel import-logs:  {imp['seconds']:.1f} s, peak RSS {imp['peak_rss_mib']:.0f} MiB "
              f"({imp['seconds'] / max(read['seconds'], 1e-9):.1f}x the time of json.loads alone, "
              f"+{imp['peak_rss_mib'] - read['peak_rss_mib']:.0f} MiB)")
        if ns.lines == TARGET_LINES:
            ok = imp["seconds"] < TARGET_SECONDS and imp["peak_rss_mib"] < TARGET_PEAK_MIB
            print(f"  target < {TARGET_SECONDS:.0f} s and < {TARGET_PEAK_MIB:.0f} MiB: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
