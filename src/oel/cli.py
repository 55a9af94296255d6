"""The `oel` command: one thin subcommand per stage of the loop.

Every config-driven subcommand takes an optional YAML file and dotted overrides:

    oel consolidate configs/frozenlake.yaml lr=5e-6 steps=20

Its `--help` lists every config key with type, default and meaning. Library code logs
through `logging`; progress bars belong to the CLI. An :class:`OELError` is printed as
one line (exit code 2), never as a traceback; so is an operating-system error a reader did
not anticipate (`-v` shows its traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from typing import Any

from oel import __version__
from oel.config import describe, load_config
from oel.errors import OELError

# Each module defines `register(subparsers)`; a stage's CLI arrives with its stage.
STAGE_MODULES: list[str] = [
    "oel.models.cli",
    "oel.envs.cli",
    "oel.collect.cli",
    "oel.extract.cli",
    "oel.consolidate.cli",
    "oel.evaluate.cli",
    "oel.loop.cli",
    "oel.report",
    "oel.online.cli",
    "oel.online.gateway_cli",
]


def config_help(cls: type) -> str:
    """An argparse epilog describing every field of config class `cls`."""
    rows = describe(cls)
    width = max(len(k) for k, *_ in rows)
    lines = ["config keys (set in the YAML file or as key=value):"]
    for key, tp, default, help_ in rows:
        lines.append(f"  {key:<{width}}  {help_}")
        lines.append(f"  {'':<{width}}    type: {tp}; default: {default}")
    return "\n".join(lines)


def add_config_command(
    subparsers: Any,
    name: str,
    config_cls: type,
    run: Callable[[Any, argparse.Namespace], int | None],
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add subcommand `name` that builds `config_cls` from [CONFIG.yaml] [key=value ...]."""
    p = subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=config_help(config_cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
                   help="an optional YAML config file, then dotted overrides")

    def _run(ns: argparse.Namespace) -> int | None:
        path, overrides = split_config_args(ns.args)
        return run(load_config(config_cls, path, overrides), ns)

    p.set_defaults(func=_run)
    return p


def split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """The first argument is a config file unless it looks like `key=value`."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, list(args)


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
