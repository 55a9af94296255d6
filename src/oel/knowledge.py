"""`Knowledge`: the lesson texts a stage reads, the one way they are passed between stages.

Extraction writes K texts to `knowledge_<k>.txt`; consolidation (and in-context evaluation)
read texts, never paths: a caller that holds the texts in memory (the loop, the online
scheduler, a test) passes them as they are, and a command that is given files reads them once,
here. The files a text came from travel with it only for the record (a consolidation run's
config.yaml names them), never to be read again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from oel.io import read_text_file


@dataclass(frozen=True)
class Knowledge:
    """The knowledge texts, with the files they were read from (empty when given in code)."""

    texts: tuple[str, ...]
    files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Tuples, whatever sequence was given: a frozen record compares and hashes by value.
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "files", tuple(str(f) for f in self.files))
        if self.files and len(self.files) != len(self.texts):
            raise ValueError(f"knowledge: {len(self.texts)} texts but {len(self.files)} files")

    @classmethod
    def of(cls, texts: Iterable[str]) -> "Knowledge":
        """Texts held in memory (no files to record)."""
        return cls(tuple(texts))

    @classmethod
    def read(cls, paths: Sequence[str | os.PathLike[str]], what: str = "knowledge file", *,
             skip_empty: bool = False) -> "Knowledge":
        """One text per plain-text file. An empty file is a one-line DataError naming it, or, with
        `skip_empty`, left out (with its path: the record names only the files whose text is used)."""
        pairs = [(str(p), read_text_file(p, what, allow_empty=skip_empty)) for p in paths]
        kept = [(f, t) for f, t in pairs if t or not skip_empty]
        return cls(tuple(t for _, t in kept), tuple(f for f, _ in kept))

    def __len__(self) -> int:
        return len(self.texts)
