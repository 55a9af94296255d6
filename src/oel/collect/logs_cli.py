"""`oel import-logs`: deployment logs -> trajectory JSONL, from the shell. Its own module so that the command
imports neither torch nor transformers (the collect command's module does).

    oel import-logs litellm.jsonl trajectories.jsonl
    oel import-logs otel-traces.jsonl trajectories.jsonl --strict
    oel import-logs --explain litellm.jsonl otel-traces.jsonl
"""

from __future__ import annotations

import argparse
from typing import Any

from oel.collect.importers import FORMATS, explain, import_logs
from oel.errors import DataError


def run_import_logs(ns: argparse.Namespace) -> int:
    if ns.explain:
        for path in ns.paths:
            for line in explain(path):
                print(line)
        return 0
    if len(ns.paths) != 2:
        raise DataError(f"import-logs: expected INPUT OUTPUT (or --explain FILE ...), got {len(ns.paths)} paths")
    src, out = ns.paths
    report = import_logs(src, out, format=ns.format, env_id=ns.env_id, model_id=ns.model_id, strict=ns.strict,
                         batch_input=ns.batch_input)
    print(f"imported {report.trajectories} trajectories ({report.calls} model calls, format {report.format}: "
          f"{report.shape}) -> {out}")
    for line in report.lines():
        print(line)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import-logs", help="convert deployment logs (LiteLLM, Langfuse, OpenTelemetry, OpenAI files) into "
                            "trajectory JSONL",
        description="Model calls are grouped into conversations by the log's session (or a trace holding several "
                    "calls) and stitched by prefix as the gateway does; each conversation is one trajectory whose "
                    "turns' feedback is the user's next message. Tool calls and results are kept as turns. The file "
                    "is streamed; skipped records are reported by kind, bad records as file:line: why. A log that "
                    "yields no trajectory is an error. See docs/online.md, 'Importing logs'.",
    )
    p.add_argument("paths", nargs="+", metavar="INPUT OUTPUT",
                   help="the log file (JSONL, or one pretty-printed JSON document) and the trajectory JSONL to write "
                        "(atomically, 0600; replaced if it exists)")
    p.add_argument("--format", choices=tuple(FORMATS), default=None,
                   help="the log's format (default: detected from its first record)")
    p.add_argument("--strict", action="store_true", help="abort at the first bad record instead of skipping it")
    p.add_argument("--explain", action="store_true",
                   help="only name each file's layout, format and record shapes (tool versions where recorded)")
    p.add_argument("--batch-input", default=None, metavar="FILE",
                   help="an OpenAI Batch input file: the prompts of a Batch output file's answers")
    p.add_argument("--env-id", default="imported", help="env_id of the trajectories (openai records may name one)")
    p.add_argument("--model-id", default=None, help="model_id of the trajectories (default: the model the log names)")
    p.set_defaults(func=run_import_logs)
