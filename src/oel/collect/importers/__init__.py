"""`oel import-logs`: deployment logs (LiteLLM, Langfuse, OpenTelemetry, OpenAI files) -> trajectories.

    base.py         a logged call, message normalisation (tool calls and results as turns), value readers
    source.py       a log file's records: JSONL streamed, or one pretty-printed document; bad lines named
    litellm.py      LiteLLM's StandardLoggingPayload and proxy spend-log rows
    langfuse.py     Langfuse traces and observations
    otel.py         OTLP JSON spans: GenAI conventions, OpenLLMetry, span events, OpenInference, Langfuse's SDK
    openai_logs.py  OpenAI chat logs, Responses API objects, Batch output
    formats.py      the formats: detection and the name of each record's shape
    grouping.py     pass 1: calls -> conversations (sessions, traces, stitching), kept small
    run.py          the two streamed passes, the report, --explain
"""

from oel.collect.importers.formats import FORMATS, detect
from oel.collect.importers.run import Report, explain, import_logs, trajectories

__all__ = ["FORMATS", "Report", "detect", "explain", "import_logs", "trajectories"]
