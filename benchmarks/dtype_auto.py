"""bf16 against float32 on this machine, and what `model.dtype=auto` picks.

    python benchmarks/dtype_auto.py [--tokens 64] [--repeats 3]

Times one forward pass of a randomly initialised decoder layer stack with the 0.5B preset's shapes
(Qwen2.5-0.5B: hidden 896, MLP 4864, 14 heads; one layer, no weights to download) in both dtypes,
the same inputs, median of `--repeats`, and prints the ratio. Why: on a CPU without native bf16
(AVX2 only) torch emulates bf16 and a layer runs 3-5x slower than in float32; with AVX-512 BF16
bf16 is about 2x faster. `auto` must follow the hardware, and this shows by how much it matters.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from oel.models.loading import cpu_bf16_native, resolve_dtype

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_smoke_flag, machine_state, median  # noqa: E402

SHAPES = dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
              num_hidden_layers=1, vocab_size=4096, max_position_embeddings=4096)
"""The 0.5B preset's layer shapes; one layer and a small vocabulary keep the bf16 side short."""
SMOKE_TOKENS = 4


def forward_seconds(dtype: torch.dtype, ids: torch.Tensor, repeats: int) -> float:
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**SHAPES)).to(dtype).eval()
    times = []
    with torch.inference_mode():
        model(input_ids=ids)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(input_ids=ids)
            times.append(time.perf_counter() - start)
    return median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64, help="prompt length of the timed forward pass")
    ap.add_argument("--repeats", type=int, default=3)
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.tokens, args.repeats = SMOKE_TOKENS, 1
    ids = torch.randint(0, SHAPES["vocab_size"], (1, args.tokens))
    fp32 = forward_seconds(torch.float32, ids, args.repeats)
    bf16 = forward_seconds(torch.bfloat16, ids, args.repeats)
    print(f"machine: {machine_state()}; cpu capability {torch.backends.cpu.get_cpu_capability()}; "
          f"native bf16: {cpu_bf16_native()}")
    print(f"one layer, {args.tokens} tokens: float32 {fp32 * 1000:.1f} ms, bf16 {bf16 * 1000:.1f} ms; "
          f"bf16 / float32 time = {bf16 / fp32:.2f}x")
    print(f"model.dtype=auto on cpu -> {str(resolve_dtype('auto', 'cpu')).removeprefix('torch.')}")


if __name__ == "__main__":
    main()
