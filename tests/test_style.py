"""House rules a reader sees at once: line length, one-line config help, named exceptions in tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from oel.config import Config, describe

ROOT = Path(__file__).resolve().parents[1]
LINE_LIMIT = 120
"""Characters per line of code (src/ and benchmarks/)."""
HELP_LIMIT = 120
"""Characters of a config key's help in `--help`; longer explanations go to docs/configuration.md."""


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _config_classes() -> list[type[Config]]:
    import oel.cli

    oel.cli.build_parser()  # imports every package that defines a command (and so every config)
    seen, todo = set(), list(Config.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("oel.") and cls not in seen:
            seen.add(cls)
            todo += cls.__subclasses__()
    return sorted(seen, key=lambda c: (c.__module__, c.__name__))


def test_no_line_is_longer_than_the_limit() -> None:
    long = [f"{p.relative_to(ROOT)}:{i}: {len(line)} characters"
            for p in _python_files("src", "benchmarks")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if len(line) > LINE_LIMIT]
    assert not long, f"lines over {LINE_LIMIT} characters:\n" + "\n".join(long)


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_config_help_is_one_short_line(cls: type[Config]) -> None:
    rows = describe(cls)
    assert all(help_ for _, _, _, help_ in rows), f"{cls.__name__}: a key without help"
    long = [f"{key}: {len(help_)} characters" for key, _, _, help_ in rows if len(help_) > HELP_LIMIT]
    assert not long, f"{cls.__name__}: help over {HELP_LIMIT} characters (move the rest to docs/configuration.md): {long}"


def test_tests_name_the_exception_they_expect() -> None:
    vague = []
    for path in _python_files("tests"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and ast.unparse(node.func) == "pytest.raises" and node.args
                    and ast.unparse(node.args[0]) in ("Exception", "BaseException")):
                vague.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not vague, f"pytest.raises(Exception) matches any bug; name the exception: {vague}"
