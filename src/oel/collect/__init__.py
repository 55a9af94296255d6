"""The collect stage (user side): the model plays episodes; trajectories are written as they end.

    play.py            CollectConfig, play_episodes, collect / `oel collect`: batched, resumable play
    server.py          ChatServer / `oel serve`: the serving stack (oel.serving) over an in-process model, no store
    batcher.py         the bounded request queue and batching worker the serving engine uses
    auth.py            bearer-token API keys (digests only), shared by `oel serve` and `oel gateway`
    cli.py             `oel collect`, `oel serve`, `oel import-logs`
    backends/          where responses come from:
      base.py            ChatBackend protocol, SamplingParams, Generation
      hf.py              HFBackend: an in-process transformers model, batched, per-row seeded, prefix KV store
      openai_endpoint.py OpenAIBackend: any OpenAI-compatible endpoint (vLLM, llama.cpp, SGLang, TGI)
      prefix_cache.py    the prefix KV store
      sampling.py        derive_seed and the per-row Gumbel-max sampler
      tiny.py            a tiny random chat model for tests and smoke runs
"""
