"""The `oel` command, the entry point at the top: nothing in the package imports it.

Each package registers its own subcommands (its `cli.py`, built with `oel.commands`); this
module lists those modules, parses the command line and turns errors into one line. Only the
module of the command given is imported: most of them load torch and transformers (seconds),
which `oel --version`, `oel --help` and `oel import-logs` never need; `COMMANDS` holds each
command's module and one-line help for the top-level `--help` (tests/test_cli_fast.py keeps it
equal to what the modules register).
Library code logs through `logging`; progress bars belong to the CLI. An :class:`OELError`
is printed as one line (exit code 2), never as a traceback; so is an operating-system error
a reader did not anticipate (`-v` shows its traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any

from oel import __version__
from oel.errors import OELError

# Each module defines `register(subparsers)`, next to the code its commands run; the order is
# the order of `oel --help`.
STAGE_MODULES: list[str] = [
    "oel.models.cli",
    "oel.envs.cli",
    "oel.collect.cli",
    "oel.collect.logs_cli",
    "oel.serving.cli",
    "oel.extract.cli",
    "oel.consolidate.cli",
    "oel.evaluate.cli",
    "oel.loop.cli",
    "oel.report.cli",
    "oel.online.cli",
    "oel.online.gateway_cli",
]
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "models": (("oel.models.cli",), "list offline model presets; prepare (verify and cache) one"),
    "envs": (("oel.envs.cli",), "report the held-out maps' ceiling: solvable share, BFS-optimal and random pass rates"),
    "collect": (("oel.collect.cli",),
                "play episodes with a model or endpoint and append their trajectories to JSONL (resumable)"),
    "import-logs": (("oel.collect.logs_cli",), "convert deployment logs (LiteLLM, Langfuse, OpenTelemetry, OpenAI "
                                               "files) into trajectory JSONL"),
    "serve": (("oel.serving.cli",), "serve a model over an OpenAI-compatible /v1/chat/completions endpoint"),
    "extract": (("oel.extract.cli",), "accumulate experiential knowledge from a round's trajectories (K runs, "
                                      "resumable)"),
    "experience": (("oel.extract.cli", "oel.evaluate.cli"), "inspect the experience store; the in-context curve"),
    "consolidate": (("oel.consolidate.cli",), "train the round's knowledge into the weights (on-policy context "
                                              "distillation)"),
    "meter": (("oel.evaluate.cli",), "the exact policy meter: student vs teacher (lessons) vs control (unrelated "
                                     "lessons) on probe states"),
    "evaluate": (("oel.evaluate.cli",), "held-out pass rate (CI, move quality, tokens/turn) with/without knowledge, "
                                        "and IF-Eval offline"),
    "loop": (("oel.loop.cli",), "run OEL rounds: collect -> extract -> consolidate, evaluating every round's model "
                                "(resumable)"),
    "report": (("oel.report.cli",), "plots and a markdown summary of an `oel loop` or `oel online demo` run (offline)"),
    "pair": (("oel.report.cli",), "two evaluations of different models on the same items: paired differences with "
                                  "95%% intervals (offline)"),
    "seeds": (("oel.report.cli",), "settings repeated over loop seeds: each seed's change and differences pooled "
                                   "over seeds (offline)"),
    "online": (("oel.online.cli",), "the online mode: the scheduler that learns from the store, and its versions"),
    "gateway": (("oel.online.gateway_cli",), "an OpenAI-compatible gateway that records every exchange for online "
                                             "learning"),
}
"""Each command: the modules that register it (in STAGE_MODULES order) and its one-line help."""


def _top_parser() -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(
        prog="oel",
        description="Online Experiential Learning: collect -> extract -> consolidate -> evaluate, in rounds.",
    )
    parser.add_argument("--version", action="version", version=f"oel {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND", required=True)


def build_parser(command: str | None = None, *, every: bool = True) -> argparse.ArgumentParser:
    """The parser: with `command`, only its modules are imported; with `every=False` none are (the others are
    listed by name and help only)."""
    parser, sub = _top_parser()
    modules = COMMANDS[command][0] if command else STAGE_MODULES if every else ()
    for mod in modules:
        importlib.import_module(mod).register(sub)
    for name, (_, help_) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_)
    return parser


def _command_word(argv: list[str]) -> str | None:
    """The command named on the line, if it is one (options before it are the top-level ones)."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = _command_word(argv)
    parser = build_parser(command, every=False)
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(ns.func(ns) or 0)
    except OELError as e:
        print(f"oel: error: {e}", file=sys.stderr)
        return 2
    except (OSError, UnicodeError) as e:
        # A file the readers did not anticipate (a device, a full disk): still one line, and
        # the traceback only when asked for with -v.
        if ns.verbose:
            raise
        print(f"oel: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oel: interrupted", file=sys.stderr)
        return 130


def os_error_line(e: OSError | UnicodeError) -> str:
    """`path: what went wrong` for an error from the operating system or a decoder."""
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"


if __name__ == "__main__":
    sys.exit(main())
