"""Config parsing: YAML + dotted overrides, rejection naming the full dotted key, --help."""

from __future__ import annotations

from typing import Literal

import pytest
import yaml

from oel.commands import add_config_command, config_help, split_config_args
from oel.config import Config, cfg, describe, load_config, save_config, to_dict
from oel.errors import ConfigError
from oel.models import ModelConfig


class Inner(Config):
    lr: float = cfg(1e-6, "learning rate")
    steps: int = cfg(20, "optimizer steps")
    kind: Literal["lora", "full"] = cfg("lora", "what to train")
    targets: list[str] = cfg(factory=lambda: ["q_proj"], help="modules")


class Outer(Config):
    name: str = cfg("run", "run name")
    seed: int | None = cfg(None, "seed or null")
    model: ModelConfig = cfg(factory=ModelConfig, help="model")
    consolidate: Inner = cfg(factory=Inner, help="consolidation")


def test_defaults_and_overrides_are_typed():
    c = load_config(Outer, None, ["consolidate.lr=5e-6", "consolidate.steps=3", "seed=7", "model.name=x.gguf"])
    assert c.consolidate.lr == pytest.approx(5e-6) and isinstance(c.consolidate.lr, float)
    assert c.consolidate.steps == 3 and c.seed == 7 and c.model.name == "x.gguf"
    assert c.consolidate.targets == ["q_proj"]


def test_int_is_accepted_for_float_but_not_bool_for_int():
    assert load_config(Outer, None, ["consolidate.lr=1"]).consolidate.lr == 1.0
    with pytest.raises(ConfigError, match=r"^consolidate\.steps: expected an integer"):
        load_config(Outer, None, ["consolidate.steps=true"])


def test_yaml_file_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: a\nconsolidate:\n  lr: 2.0e-6\n  kind: full\n")
    c = load_config(Outer, p, ["name=b"])
    assert (c.name, c.consolidate.lr, c.consolidate.kind) == ("b", 2e-6, "full")


@pytest.mark.parametrize(
    "override, message",
    [
        ("consolidate.lrr=1", r"^consolidate\.lrr: unknown config key \(did you mean consolidate\.lr\?\)"),
        ("model.nam=x", r"^model\.nam: unknown config key"),
        ("bogus=1", r"^bogus: unknown config key"),
        ("consolidate.lr=abc", r"^consolidate\.lr: expected a number, got 'abc'"),
        ("consolidate.kind=half", r"^consolidate\.kind: expected one of 'lora' \| 'full', got 'half'"),
        ("consolidate.targets=3", r"^consolidate\.targets: expected list\[str\]"),
        ("consolidate.targets=[1]", r"^consolidate\.targets\[0\]: expected a string"),
        ("model.dtype=int8", r"^model\.dtype: expected one of"),
        ("consolidate=3", r"^consolidate: expected a mapping"),
        ("consolidate.lr.x=3", r"^consolidate\.lr: expected a number"),
        ("name.x=3", r"^name: expected a string"),
        ("noequals", r"override must look like"),
    ],
)
def test_bad_keys_and_types_name_the_full_dotted_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, [override])


def test_bad_yaml_reports_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: a\nconsolidate: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(Outer, p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping of config keys"):
        load_config(Outer, tmp_path / "list.yaml")


def test_resolved_config_round_trips(tmp_path):
    c = load_config(Outer, None, ["consolidate.lr=3e-6", "model.cache_dir=/x"])
    save_config(c, tmp_path / "config.yaml")
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert data["consolidate"]["lr"] == 3e-6 and data["model"]["cache_dir"] == "/x"
    assert load_config(Outer, tmp_path / "config.yaml") == c
    assert to_dict(c) == data


def test_describe_lists_every_leaf_with_help():
    keys = {k: (tp, default, help_) for k, tp, default, help_ in describe(Outer)}
    assert set(keys) >= {"name", "seed", "model.name", "model.dtype", "consolidate.lr", "consolidate.targets"}
    assert all(help_ for _, _, help_ in keys.values())
    assert keys["consolidate.lr"][1] == "1e-06"
    text = config_help(Outer)
    for k in keys:
        assert k in text


def test_config_command_parses_file_and_overrides(tmp_path):
    import argparse

    seen = {}
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_config_command(sub, "demo", Outer, lambda c, ns: seen.setdefault("c", c), help="demo")
    p = tmp_path / "c.yaml"
    p.write_text("name: fromfile\n")
    ns = parser.parse_args(["demo", str(p), "consolidate.steps=9"])
    ns.func(ns)
    assert seen["c"].name == "fromfile" and seen["c"].consolidate.steps == 9
    assert split_config_args(["a=1", "b=2"]) == (None, ["a=1", "b=2"])


def test_cli_prints_one_line_error_for_a_bad_key(capsys):
    from oel.cli import main

    assert main(["models", "prepare", "--dtype", "bfloat16", "/nonexistent/model.gguf"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GGUF file not found" in err[0]


def test_base_chain_merges_underneath(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nconsolidate:\n  lr: 2.0e-6\n  steps: 5\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nconsolidate:\n  steps: 7\n")
    c = load_config(Outer, tmp_path / "sub" / "b.yaml", ["seed=1"])
    assert (c.name, c.consolidate.lr, c.consolidate.steps, c.seed) == ("a", 2e-6, 7, 1)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="chain loops back"):
        load_config(Outer, tmp_path / "loop.yaml")
