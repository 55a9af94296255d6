"""Every recipe in configs/ is a valid config of the command it is for (no run, no model load)."""

from __future__ import annotations

from pathlib import Path

import pytest

from oel.config import Config, load_config
from oel.consolidate.config import ConsolidateCommandConfig
from oel.loop.config import LoopConfig
from oel.online.config import OnlineConfig
from oel.online.demo import DemoConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

SCHEMA_OF: dict[str, type[Config]] = {
    "online.yaml": OnlineConfig,                          # oel online run
    "online-demo.yaml": DemoConfig,                       # oel online demo
    "gpu/consolidate-8gpu-fsdp.yaml": ConsolidateCommandConfig,  # oel consolidate (one round on 8 GPUs)
    "gpu/consolidate-8gpu-ddp-lora.yaml": ConsolidateCommandConfig,
}
"""Which command reads each YAML file in configs/; every other one is an `oel loop` config."""

YAMLS = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.y*ml"))


def test_configs_dir_has_yaml_files_and_the_schema_map_names_only_existing_ones() -> None:
    assert len(YAMLS) > 10
    assert set(SCHEMA_OF) <= set(YAMLS)


@pytest.mark.parametrize("name", YAMLS)
def test_every_config_in_configs_validates(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # paths inside recipes (knowledge files, templates) are relative to the repo
    config = load_config(SCHEMA_OF.get(name, LoopConfig), CONFIGS / name)
    assert isinstance(config, SCHEMA_OF.get(name, LoopConfig))
