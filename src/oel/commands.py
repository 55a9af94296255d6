"""How a package adds its subcommands to the `oel` command: the helpers below every stage.

Each package with commands has a `cli.py` whose `register(subparsers)` adds them, next to
the code they run; `oel.cli` (the entry point, at the top) only lists those modules. A
config-driven command takes an optional YAML file and dotted overrides:

    oel consolidate configs/frozenlake.yaml lr=5e-6 steps=20

and its `--help` lists every config key with type, default and meaning.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from oel.config import describe, load_config


def config_help(cls: type) -> str:
    """An argparse epilog describing every field of config class `cls`."""
    rows = describe(cls)
    width = max(len(k) for k, *_ in rows)
    lines = ["config keys (set in the YAML file or as key=value; longer explanations in docs/configuration.md):"]
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


def command_group(subparsers: Any, name: str, help: str) -> Any:
    """The subparsers of group `name` (`oel experience ...`), created by whichever package
    registers into it first: the group's commands live with the code each one runs."""
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help)
        parser.set_defaults(group_actions=parser.add_subparsers(dest=f"{name}_command", metavar="ACTION",
                                                                required=True))
    return parser.get_default("group_actions")


EXPERIENCE_GROUP = ("experience", "inspect the experience store; the in-context curve")
"""`oel experience ...`: show and diff are the extract stage's, curve the evaluate stage's."""


def progress_bar() -> Any:
    """A rich progress bar with counts and times (imported here: the CLI owns progress bars)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn())


def split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """The first argument is a config file unless it looks like `key=value`."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, list(args)
