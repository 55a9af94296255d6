"""Streaming from the in-process model: time to first text vs the whole answer, through the official client.

    python benchmarks/serve_stream.py [--model smollm2-135m-instruct] [--requests 5] [--max-tokens 64]

`oel serve` (the serving stack without a store) over a real model on 127.0.0.1; each request
is sent twice with the same seed, streamed and not, by the official `openai` client. Printed
per request: the time to the first content chunk, the time to the whole streamed answer, the
non-streamed answer's time, the tokens, and whether the two texts are equal (they must be). A
server that generates the whole answer and then chunks it fails this: its first text arrives with the last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SMALL_PRESET, add_smoke_flag, machine_state, smoke_model, state_note  # noqa: E402

KEY = "serve-stream-key-0123456789"
PROMPTS = ["Explain in a few sentences why the sky is blue.", "Write a short poem about a frozen lake.",
           "List three ways to get out of a maze.", "What should you do when you reach a hole on the ice?",
           "Describe a sunrise to someone who has never seen one."]
SMOKE_MAX_TOKENS = 4


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=SMALL_PRESET, help="a preset or HF directory")
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        args.model, args.requests, args.max_tokens = smoke_model(), 1, SMOKE_MAX_TOKENS

    import openai

    from oel.backends.hf import HFBackend
    from oel.serving.chat_server import ChatServer, ServeConfig
    from oel.models import ModelConfig

    backend = HFBackend.from_model_config(ModelConfig(name=args.model, dtype=args.dtype, device="cpu"),
                                          prefix_cache_bytes=0)
    config = ServeConfig(port=0, api_keys=[f"bench:{KEY}"], api_keys_env="", max_tokens_limit=args.max_tokens)
    first, whole, plain, same = [], [], [], []
    with ChatServer(backend, config) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key=KEY, max_retries=0)
        for i in range(args.requests):
            body = dict(model="m", messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                        max_tokens=args.max_tokens, temperature=0.7, seed=i)
            t0 = time.perf_counter()
            answer = client.chat.completions.create(**body)
            plain.append(time.perf_counter() - t0)
            t0, pieces, t_first = time.perf_counter(), [], None
            for chunk in client.chat.completions.create(**body, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    t_first = t_first if t_first is not None else time.perf_counter() - t0
                    pieces.append(chunk.choices[0].delta.content)
            whole.append(time.perf_counter() - t0)
            first.append(t_first if t_first is not None else float("nan"))
            same.append("".join(pieces) == answer.choices[0].message.content)
            print(f"request {i}: first text {first[-1] * 1000:.0f} ms, streamed answer {whole[-1] * 1000:.0f} ms, "
                  f"non-streamed {plain[-1] * 1000:.0f} ms, {answer.usage.completion_tokens} tokens, "
                  f"same text: {same[-1]}", flush=True)
    print(f"median: first text {statistics.median(first) * 1000:.0f} ms of {statistics.median(whole) * 1000:.0f} ms "
          f"streamed ({statistics.median(plain) * 1000:.0f} ms not streamed); same text {sum(same)}/{len(same)}; "
          f"{args.model} {args.dtype} {state_note(machine_state())}")
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
