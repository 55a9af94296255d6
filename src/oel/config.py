"""Typed configuration: pydantic models, YAML files and dotted `key=value` overrides.

Every stage has one config class (a :class:`Config`) whose fields carry their documentation
(`cfg(default, "help")`). `load_config(Cls, yaml_path, ["a.b=1"])` builds a validated,
frozen-by-convention instance; pydantic checks every value strictly (an integer is a number,
`true` is not an integer), and its first problem becomes one :class:`ConfigError` naming the
full dotted key. `to_dict` gives the resolved config, which every run writes into its run
directory; `describe` lists every key for `--help`.
"""

from __future__ import annotations

import difflib
import os
import types
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails, PydanticUndefined

from oel.config_sources import load_config_data
from oel.errors import ConfigError
from oel.io import atomic_write_text
from oel.validation import error_text

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every config class: documented fields, unknown keys refused.

    Validation in `__init__` is pydantic's lax mode (code may pass a tuple for a list); files
    and overrides go through :func:`from_dict`, which is strict. Checks across fields go in
    `model_post_init`: a ValueError there is reported under the config's dotted key, a
    ConfigError as it is (it names its key itself).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    def __init__(self, **data: Any) -> None:
        """Build in code; a bad value is one line naming the field (a ConfigValueError)."""
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigValueError(_message(type(self), data, _chosen(e), whole="")) from None

    @classmethod
    def field_order(cls) -> tuple[str, ...]:
        """The order of the fields in `to_dict` (saved configs, records) and `describe` (--help):
        as declared. A command config that adds a stage's inputs to its settings (a subclass, whose
        fields pydantic puts last) returns them to where its users and its saved records have them."""
        return tuple(cls.model_fields)

    @classmethod
    def config_name(cls) -> str:
        """What an error about the whole config calls it."""
        return cls.__name__

    @classmethod
    def unknown_key_hint(cls, key: str) -> str:
        """What to say instead of 'unknown config key' about the dotted key `key`; '' for that.
        A config whose sections leave out keys that the section's own command has (the loop's
        stages: their inputs are the loop's to choose) says where those keys went."""
        return ""

    # Validation of nested configs must not go through this __init__ (it would be lax inside a
    # strict `from_dict`): marked as pydantic marks its own RootModel.__init__.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


class ConfigValueError(ConfigError, ValueError):
    """A config built in code with a bad value: a ConfigError (one line for the CLI) and, like the
    check of a dataclass's `__post_init__`, a ValueError."""


def cfg(default: Any = PydanticUndefined, help: str = "", *, factory: Any = None) -> Any:
    """A documented config field. `factory` for mutable defaults (lists, nested configs)."""
    if factory is not None:
        return Field(default_factory=factory, description=help)
    return Field(default=default, description=help)


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build and validate a config from plain data (YAML/JSON); ConfigError names the dotted key."""
    try:
        return cls.model_validate(data, strict=True)
    except ValidationError as e:
        raise ConfigError(_message(cls, data, _chosen(e), whole=cls.config_name())) from None


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> C:
    """YAML file (optional, with its `base:` chain) + dotted overrides -> validated config of type `cls`."""
    return from_dict(cls, load_config_data(path, overrides))


class CommandConfig(Config):
    """The config of a stage's command: the stage's settings and its inputs (what it reads and
    writes, which model), flat, as `class XCommandConfig(XConfig, XInputs, CommandConfig)`.

    The stage function takes the settings as its config and the inputs as arguments; the command
    keeps the keys, their order (`INPUTS_AFTER`: where each input key sat among the settings when
    they were one config) and the error messages it had before they were split."""

    SETTINGS: ClassVar[type[Config]]
    INPUTS: ClassVar[type[Config]]
    INPUTS_AFTER: ClassVar[dict[str, str]] = {}

    @classmethod
    def field_order(cls) -> tuple[str, ...]:
        if not hasattr(cls, "SETTINGS"):  # this base itself: no fields
            return super().field_order()
        return inputs_placed(cls.SETTINGS, cls.INPUTS, cls.INPUTS_AFTER)

    @classmethod
    def config_name(cls) -> str:
        return cls.SETTINGS.__name__ if hasattr(cls, "SETTINGS") else cls.__name__

    def settings(self) -> Any:
        """The user's settings alone: what the stage function takes as its config."""
        return self.SETTINGS(**{name: getattr(self, name) for name in self.SETTINGS.model_fields})


def inputs_placed(settings: type[Config], inputs: type[Config], after: dict[str, str]) -> tuple[str, ...]:
    """A field order for a command config = `settings` + `inputs`: each input key right after the
    settings key `after` names for it, the others first (where they were declared before the split)."""
    unknown = sorted(set(after) - set(inputs.model_fields)) + sorted(set(after.values()) - set(settings.model_fields))
    if unknown:
        raise ValueError(f"inputs_placed: not fields of {inputs.__name__} / {settings.__name__}: {unknown}")
    first = [k for k in inputs.model_fields if k not in after]
    order: list[str] = []
    for key in settings.model_fields:
        order.append(key)
        order += [k for k, prev in after.items() if prev == key]
    return (*first, *order)


def merged(settings: Config, inputs: Config, order_of: type[Config]) -> dict[str, Any]:
    """`settings` and `inputs` as one mapping in `order_of`'s field order: what a stage records when
    its settings and inputs reach it separately, the same as its command config would dump."""
    values = {**to_dict(settings), **to_dict(inputs)}
    return {k: values[k] for k in order_of.field_order()}


def updated(config: C, **changes: Any) -> C:
    """A copy of `config` with some fields changed, validated again (its checks run again too)."""
    return type(config)(**{**{name: getattr(config, name) for name in type(config).model_fields}, **changes})


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain data (tuples become lists) for YAML/JSON."""
    def plain(v: Any) -> Any:
        if isinstance(v, Config):
            return {name: plain(getattr(v, name)) for name in type(v).field_order()}
        if isinstance(v, BaseModel):
            return {name: plain(getattr(v, name)) for name in type(v).model_fields}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(config)


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write the fully resolved config (atomically) as YAML."""
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def describe(cls: type[Config], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every field, recursively: the CLI's --help."""
    rows = []
    for name in cls.field_order():
        field, key = cls.model_fields[name], prefix + name
        if _is_config(field.annotation):
            rows.extend(describe(field.annotation, key + "."))
            continue
        if field.default is not PydanticUndefined:
            default = repr(field.default)
        elif field.default_factory is not None:
            default = repr(field.default_factory())  # type: ignore[call-arg]
        else:
            default = "(required)"
        rows.append((key, type_name(field.annotation), default, field.description or ""))
    return rows


def type_name(tp: Any) -> str:
    """A config type as the user writes its values: `'lora' | 'full'`, `int | null`, `list[str]`."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Config)


def _chosen(e: ValidationError) -> ErrorDetails:
    """The error to report: an unknown key first (the outermost), as a typo explains what follows."""
    errors = e.errors(include_url=False)
    unknown = [err for err in errors if err["type"] == "extra_forbidden"]
    return min(unknown, key=lambda err: len(err["loc"])) if unknown else errors[0]


def _walk(cls: type[Config], data: Any, loc: tuple[int | str, ...]) -> tuple[str, Any, Any, int]:
    """(dotted key, declared type, value, parts used) of the deepest config field `loc` names.

    A part that is no field (an unknown key, a union's branch tag) ends the walk, so a union's
    error is reported against the whole union, as the user wrote it.
    """
    key, tp, value = "", cls, data
    for used, part in enumerate(loc):
        if _is_config(tp) and isinstance(part, str) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
            key = f"{key}.{part}" if key else part
        elif get_origin(tp) in (list, tuple) and isinstance(part, int):
            tp = (get_args(tp) or (Any,))[0]
            value = value[part] if isinstance(value, (list, tuple)) and part < len(value) else None
            key += f"[{part}]"
        else:
            return key, tp, value, used
    return key, tp, value, len(loc)


def _message(cls: type[Config], data: Any, err: ErrorDetails, whole: str) -> str:
    """One line: the full dotted key, then what was expected and what came (`whole`: what to call
    the config itself when a check of all its fields fails)."""
    key, tp, value, used = _walk(cls, data, err["loc"])
    if err["type"] == "extra_forbidden":
        name = str(err["loc"][used])
        close = difflib.get_close_matches(name, list(tp.model_fields), n=3)
        parent = f"{key}." if key else ""
        instead = cls.unknown_key_hint(parent + name)
        if instead:
            return f"{parent}{name}: {instead}"
        hint = f" (did you mean {', '.join(parent + c for c in close)}?)" if close else ""
        return f"{parent}{name}: unknown config key{hint}"
    if err["type"] == "value_error":  # a check in model_post_init
        where = key or whole
        return f"{where}: {error_text(err)}" if where else error_text(err)
    return f"{key}: {_expected(tp)}, got {value!r}" if _expected(tp) else f"{key}: {error_text(err)}"


_SCALARS = {bool: "expected true or false", int: "expected an integer", float: "expected a number",
            str: "expected a string", type(None): "expected null"}


def _expected(tp: Any) -> str:
    """'expected ...' for a value that does not fit type `tp` ('' when there is nothing better to say)."""
    origin = get_origin(tp)
    if _is_config(tp):
        return f"expected a mapping of {tp.__name__} fields"
    if origin is Literal:
        return f"expected one of {type_name(tp)}"
    if origin in (Union, types.UnionType, list, tuple):
        return f"expected {type_name(tp)}"
    if origin is dict or tp is dict:
        return "expected a mapping"
    return _SCALARS.get(tp, "")
