"""`oel import-logs` on a large generated log: is memory bounded, and how long does it take?

    python benchmarks/import_logs.py [--lines 200000] [--format litellm] [--turns 4]

Writes a LiteLLM (or openai) log of `--lines` records to a temp dir, streamed (the generator
never holds the file), as conversations of `--turns` calls with no session id (the worst
case: every call goes through the stitching index), then runs `oel import-logs` on it in a
fresh process and prints the file size, the wall time and that process's peak RSS, next to
the peak RSS of the same process importing a 1,000-line file (what the interpreter and
imports cost on their own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_smoke_flag, emit, run_child  # noqa: E402

BASELINE_LINES = 1_000
"""The small import whose peak RSS is what the interpreter and the imports cost on their own."""
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
                record = {"id": f"chatcmpl-{i}", "trace_id": f"trace-{i}", "call_type": "acompletion",
                          "status": "success", "startTime": 1733470000.0 + i, "model": "gpt-4o-mini",
                          "prompt_tokens": 30 * (k + 1), "completion_tokens": 8, "metadata": {},
                          "messages": messages,
                          "response": {"choices": [{"message": {"role": "assistant", "content": answer}}]}}
            else:
                record = {"messages": [*messages, {"role": "assistant", "content": answer}]}
            f.write(json.dumps(record) + "\n")


def child(src: str, out: str) -> None:
    from oel.collect.importers import import_logs
    from oel.memory import peak_rss_mib

    t0 = time.perf_counter()
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
    baseline = SMOKE_LINES if ns.smoke else BASELINE_LINES
    if ns.smoke:
        ns.lines = 2 * SMOKE_LINES
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for n in (baseline, ns.lines):
            src, out = Path(tmp) / f"log-{n}.jsonl", Path(tmp) / f"traj-{n}.jsonl"
            write_log(src, n, ns.turns, ns.format)
            r = run_child(__file__, ["--child", str(src), str(out)])
            r["file_mib"] = os.path.getsize(src) / 2**20
            results[n] = r
            print(f"{n:>7} lines ({r['file_mib']:.0f} MiB {ns.format}): {r['trajectories']} trajectories from "
                  f"{r['calls']} calls in {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB "
                  f"[load avg {os.getloadavg()[0]:.2f}]", flush=True)
            src.unlink()
            out.unlink()
        big = results[ns.lines]
        print(f"peak RSS over the {baseline:,}-line run: "
              f"{big['peak_rss_mib'] - results[baseline]['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
