"""`oel import-logs`: deployment logs (LiteLLM, Langfuse, OpenTelemetry GenAI, OpenAI chat) -> trajectories.

    base.py      a logged call, message normalisation (tool calls and results as turns), streamed lines
    formats.py   each format's records -> calls or skips, and auto-detection
    run.py       the two streamed passes: group calls into conversations, write trajectories
"""

from oel.collect.importers.formats import FORMATS, detect
from oel.collect.importers.run import Report, import_logs, trajectories

__all__ = ["FORMATS", "Report", "detect", "import_logs", "trajectories"]
