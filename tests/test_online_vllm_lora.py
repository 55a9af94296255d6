"""vLLM LoRA hot swap (oel.online.vllm_lora) against a stand-in HTTP server that checks the requests.

No live vLLM here: the stand-in answers /v1/load_lora_adapter and /v1/unload_lora_adapter the way
vLLM's docs describe (200 with a text body; 400 for an unknown adapter), so what is tested is what
oel sends and how it reacts, not that vLLM serves the adapter.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from oel.errors import ConfigError, DataError
from oel.online import vllm_lora
from oel.online.config import OnlineConfig, VllmLoraConfig

KEYS = ("base_model.model.model.layers.0.self_attn.q_proj", "base_model.model.model.layers.0.mlp.up_proj")
DIM_IN, DIM_OUT = 8, 6


class StandIn:
    """A stand-in vLLM: records (path, body, authorization); refuses loads of paths without a config."""

    def __init__(self, unload_status: int = 200) -> None:
        self.requests: list[tuple[str, dict, str | None]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.requests.append((self.path, body, self.headers.get("Authorization")))
                if self.path == "/v1/load_lora_adapter":
                    ok = (Path(body["lora_path"]) / "adapter_config.json").is_file()
                    status, text = (200, f"Success: LoRA adapter '{body['lora_name']}' added successfully.") if ok \
                        else (400, "No adapter found")
                elif self.path == "/v1/unload_lora_adapter":
                    status, text = unload_status, "unloaded" if unload_status == 200 else "adapter not found"
                else:
                    status, text = 404, "not found"
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in():
    s = StandIn()
    yield s
    s.close()


def write_adapter(directory: Path, r: int, alpha: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for k in KEYS:
        weights[f"{k}.lora_A.weight"] = torch.randn(r, DIM_IN, generator=g)
        weights[f"{k}.lora_B.weight"] = torch.randn(DIM_OUT, r, generator=g)
    directory.mkdir(parents=True)
    save_file(weights, str(directory / vllm_lora.WEIGHTS_FILE))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj", "up_proj"],
              "base_model_name_or_path": "base"}
    (directory / vllm_lora.CONFIG_FILE).write_text(json.dumps(config))
    return weights


def delta(weights: dict[str, torch.Tensor], config: dict, key: str) -> torch.Tensor:
    return weights[f"{key}.lora_B.weight"] @ weights[f"{key}.lora_A.weight"] * (config["lora_alpha"] / config["r"])


def published(root: Path, version: int, r: int, alpha: float) -> tuple[str, dict]:
    """A version dir as oel.online.versions lays it out, its model carrying the round's adapter."""
    model_dir = root / f"v{version:04d}" / "model"
    weights = write_adapter(model_dir / vllm_lora.ROUND_ADAPTER_DIR, r, alpha, seed=version)
    return str(model_dir), {"r": r, "lora_alpha": alpha, "weights": weights}


def test_the_cumulative_adapter_is_the_sum_of_the_rounds_deltas(tmp_path: Path) -> None:
    v1, a1 = published(tmp_path, 1, r=4, alpha=8)
    v2, a2 = published(tmp_path, 2, r=2, alpha=6)  # another scaling: its B is rescaled
    first = vllm_lora.cumulative_adapter(v1, None)
    both = vllm_lora.cumulative_adapter(v2, v1)
    assert first == Path(v1).parent / "vllm_lora" and both == Path(v2).parent / "vllm_lora"
    config = json.loads((both / vllm_lora.CONFIG_FILE).read_text())
    weights = load_file(str(both / vllm_lora.WEIGHTS_FILE))
    assert config["r"] == 6 and config["lora_alpha"] == 12  # scaling 2, the first round's
    for key in KEYS:
        want = delta(a1["weights"], a1, key) + delta(a2["weights"], a2, key)
        torch.testing.assert_close(delta(weights, config, key), want)


def test_publish_loads_the_new_adapter_then_unloads_the_previous(tmp_path: Path, stand_in: StandIn) -> None:
    v1, _ = published(tmp_path, 1, r=4, alpha=8)
    v2, _ = published(tmp_path, 2, r=4, alpha=8)
    vllm_lora.swap(stand_in.url, version=1, adapter_dir=vllm_lora.cumulative_adapter(v1, None), previous=0,
                   api_key="sk-test")
    out = vllm_lora.swap(stand_in.url, version=2, adapter_dir=vllm_lora.cumulative_adapter(v2, v1), previous=1,
                         prefix="oel", api_key=None)
    assert out == {"vllm_lora_loaded": "oel-v2", "vllm_lora_unloaded": "oel-v1"}
    assert stand_in.requests == [
        ("/v1/load_lora_adapter", {"lora_name": "oel-v1", "lora_path": str(Path(v1).parent / "vllm_lora")}, "Bearer sk-test"),
        ("/v1/load_lora_adapter", {"lora_name": "oel-v2", "lora_path": str(Path(v2).parent / "vllm_lora")}, None),
        ("/v1/unload_lora_adapter", {"lora_name": "oel-v1"}, None),
    ]


def test_a_refused_load_raises_and_unloads_nothing(tmp_path: Path, stand_in: StandIn) -> None:
    with pytest.raises(DataError, match="load_lora_adapter answered 400: No adapter found"):
        vllm_lora.swap(stand_in.url, version=3, adapter_dir=tmp_path / "missing", previous=2)
    assert [path for path, *_ in stand_in.requests] == ["/v1/load_lora_adapter"]


def test_a_refused_unload_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    refusing = StandIn(unload_status=400)
    try:
        v1, _ = published(tmp_path, 1, r=2, alpha=4)
        out = vllm_lora.swap(refusing.url, version=2, adapter_dir=vllm_lora.cumulative_adapter(v1, None), previous=1)
    finally:
        refusing.close()
    assert out == {"vllm_lora_loaded": "oel-v2", "vllm_lora_unloaded": None}
    assert "kept adapter oel-v1 loaded" in caplog.text


def test_unreachable_vllm_and_a_full_finetune_version_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot reach vLLM"):
        vllm_lora.swap("http://127.0.0.1:9", version=1, adapter_dir=tmp_path, previous=None)
    (tmp_path / "v0002" / "model").mkdir(parents=True)
    with pytest.raises(DataError, match="not a LoRA adapter directory"):
        vllm_lora.cumulative_adapter(str(tmp_path / "v0002" / "model"), None)


def test_the_hook_needs_lora_consolidation() -> None:
    from oel.consolidate import ConsolidateConfig

    with pytest.raises(ConfigError, match="vllm_lora.url: needs consolidate.finetune=lora"):
        OnlineConfig(vllm_lora=VllmLoraConfig(url="http://vllm:8000"), consolidate=ConsolidateConfig(finetune="full"))
    OnlineConfig(vllm_lora=VllmLoraConfig(url="http://vllm:8000"))  # lora is the default


def test_a_lora_round_saves_its_adapter_in_peft_format(tmp_path: Path, one_thread) -> None:
    """The real save path: a tiny peft model's final directory carries lora_adapter/ that stacking reads."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oel.backends.tiny import save_tiny_chat_model
    from oel.consolidate.checkpoint import LORA_ADAPTER_DIR, save_hf_model

    base_dir = save_tiny_chat_model(tmp_path / "base", seed=1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    out = save_hf_model(model, AutoTokenizer.from_pretrained(base_dir), tmp_path / "v0001" / "model")
    assert (out / "config.json").is_file() and (out / LORA_ADAPTER_DIR / vllm_lora.CONFIG_FILE).is_file()
    stacked = vllm_lora.stack(out / LORA_ADAPTER_DIR, out / LORA_ADAPTER_DIR, tmp_path / "twice")
    assert json.loads((stacked / vllm_lora.CONFIG_FILE).read_text())["r"] == 4


def test_the_scheduler_swaps_each_published_version(tmp_path: Path, stand_in: StandIn) -> None:
    """Scheduler._swap_vllm_lora over real published versions: version 1 from the base, version 2 stacked on it."""
    from oel.online.scheduler import Scheduler
    from oel.online.versions import Versions

    versions = Versions(tmp_path / "versions")
    versions.ensure_base("base-model")
    scheduler = Scheduler.__new__(Scheduler)  # only what _swap_vllm_lora reads: no model, no store
    scheduler.config = OnlineConfig(vllm_lora=VllmLoraConfig(url=stand_in.url, prefix="shop"))
    scheduler.versions = versions
    outs = []
    for r in range(2):
        src = tmp_path / f"round{r}"
        write_adapter(src / vllm_lora.ROUND_ADAPTER_DIR, r=2, alpha=4, seed=r)
        (src / "config.json").write_text("{}")
        outs.append(scheduler._swap_vllm_lora(versions.publish(src, round=r)))
    assert outs == [{"vllm_lora_loaded": "shop-v1"}, {"vllm_lora_loaded": "shop-v2", "vllm_lora_unloaded": "shop-v1"}]
    assert json.loads((tmp_path / "versions" / stand_in.requests[1][1]["lora_path"] / "adapter_config.json")
                      .read_text())["r"] == 4
