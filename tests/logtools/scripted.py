"""The served model for the logging-tool tests: the tiny random model, which calls a tool where the agent's
script says (a random model cannot choose to), through the same server, parser and wire format."""

from __future__ import annotations

from collections.abc import Sequence

from agent import TOOL_TURNS, tool_call_text

from oel.backends.base import Generation
from oel.backends.hf import HFBackend, RowRequest


class ToolCallingBackend(HFBackend):
    """HFBackend that answers the scripted user messages with `<tool_call>` text; every other row is generated."""

    def generate_rows(self, rows: Sequence[RowRequest]) -> list[Generation]:
        scripted = {i: TOOL_TURNS[r.messages[-1].content] for i, r in enumerate(rows)
                    if r.messages[-1].content in TOOL_TURNS}
        generated = iter(super().generate_rows([r for i, r in enumerate(rows) if i not in scripted]))
        out = []
        for i, row in enumerate(rows):
            if i in scripted:
                text = tool_call_text(scripted[i])
                out.append(Generation(text, len(self.encode(row.messages, False)),
                                      len(self.tokenizer(text)["input_ids"])))
            else:
                out.append(next(generated))
        return out
