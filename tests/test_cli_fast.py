"""The `oel` command starts fast: `--version`, `--help` and `import-logs` import neither torch nor transformers.

Each check runs the command in a fresh interpreter and reads `sys.modules` at exit; the listing of
commands that `oel --help` prints without importing them is checked against what the modules register.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

import oel.cli

HEAVY = ("torch", "transformers")
LOGS = Path(__file__).parent / "data" / "logs"
PROBE = ("import atexit, json, sys\n"
         "atexit.register(lambda: sys.__stderr__.write('MODULES ' + json.dumps(sorted(m for m in {heavy} "
         "if m in sys.modules)) + '\\n'))\n"
         "from oel.cli import main\n"
         "sys.exit(main({argv}))\n")


def imported_heavy(argv: list[str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY, argv=argv)], capture_output=True, text=True,
                          timeout=120)
    line = next(x for x in done.stderr.splitlines() if x.startswith("MODULES "))
    return json.loads(line.removeprefix("MODULES "))


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["import-logs", "--help"],
                                  ["import-logs", "--explain", str(LOGS / "otel.jsonl")]])
def test_light_commands_do_not_import_torch_or_transformers(argv: list[str]) -> None:
    assert imported_heavy(argv) == []


def test_a_real_import_does_not_either(tmp_path: Path) -> None:
    assert imported_heavy(["import-logs", str(LOGS / "litellm.jsonl"), str(tmp_path / "t.jsonl")]) == []
    assert (tmp_path / "t.jsonl").exists()


def test_the_listing_matches_what_the_modules_register() -> None:
    full = oel.cli.build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    registered = {c.dest: c.help for c in sub._choices_actions}
    assert registered == {name: help_ for name, (_, help_) in oel.cli.COMMANDS.items()}
    for name, (modules, _) in oel.cli.COMMANDS.items():  # each command's modules alone register it
        assert name in oel.cli.build_parser(name, every=False)._subparsers._group_actions[0].choices  # type: ignore
        assert set(modules) <= set(oel.cli.STAGE_MODULES)
