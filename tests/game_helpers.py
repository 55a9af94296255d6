"""The one way the environment tests build a game: `make_env` on an `EnvConfig`, checked to be the
class the test is about, so a registry mix-up fails at construction rather than deep in an assertion."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from oel.envs import EnvConfig, make_env

GameT = TypeVar("GameT")


def make_game(name: str, cls: type[GameT], **overrides: Any) -> GameT:
    """Game `name` with `overrides` of its `EnvConfig`, asserted to be a `cls`."""
    env = make_env(EnvConfig(game=name, **overrides))
    assert isinstance(env, cls), f"{name}: make_env built {type(env).__name__}, expected {cls.__name__}"
    return env


def game_factory(name: str, cls: type[GameT], **defaults: Any) -> Callable[..., GameT]:
    """A `game(**overrides)` builder for one game: `defaults` (e.g. the test file's turn cap) apply
    unless overridden."""
    return lambda **overrides: make_game(name, cls, **{**defaults, **overrides})
