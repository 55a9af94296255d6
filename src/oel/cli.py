"""The `oel` command, the entry point at the top: nothing in the package imports it.

Each package registers its own subcommands (its `cli.py`, built with `oel.commands`); this
module lists those modules, parses the command line and turns errors into one line.
Library code logs through `logging`; progress bars belong to the CLI. An :class:`OELError`
is printed as one line (exit code 2), never as a traceback; so is an operating-system error
a reader did not anticipate (`-v` shows its traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from oel import __version__
from oel.errors import OELError

# Each module defines `register(subparsers)`, next to the code its commands run; the order is
# the order of `oel --help`.
STAGE_MODULES: list[str] = [
    "oel.models.cli",
    "oel.envs.cli",
    "oel.collect.cli",
    "oel.serving.cli",
    "oel.extract.cli",
    "oel.consolidate.cli",
    "oel.evaluate.cli",
    "oel.loop.cli",
    "oel.report.cli",
    "oel.online.cli",
    "oel.online.gateway_cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oel",
        description="Online Experiential Learning: collect -> extract -> consolidate -> evaluate, in rounds.",
    )
    parser.add_argument("--version", action="version", version=f"oel {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in STAGE_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
