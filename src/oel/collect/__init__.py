"""The collect stage (user side): the model plays episodes; trajectories are written as they end.

    play.py            CollectConfig, play_episodes, collect / `oel collect`: batched, resumable play
    server.py          ChatServer / `oel serve`: an OpenAI-compatible server over an in-process model
    cli.py             `oel collect`, `oel serve`, `oel import-logs`
    backends/          where responses come from:
      base.py            ChatBackend protocol, SamplingParams, Generation
      hf.py              HFBackend: an in-process transformers model, batched, per-row seeded, prefix KV store
      openai_endpoint.py OpenAIBackend: any OpenAI-compatible endpoint (vLLM, llama.cpp, SGLang, TGI)
      prefix_cache.py    the prefix KV store
      sampling.py        derive_seed and the per-row Gumbel-max sampler
      tiny.py            a tiny random chat model for tests and smoke runs
"""
