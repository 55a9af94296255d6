"""Where a stage's responses come from: the shared model layer under every stage.

    base.py            ChatBackend protocol, SamplingParams, Generation
    select.py          BackendConfig and make_backend / from_config: which backend a stage uses
    hf.py              HFBackend: an in-process transformers model, batched, per-row seeded, prefix KV store
    openai_endpoint.py OpenAIBackend: any OpenAI-compatible endpoint (vLLM, llama.cpp, SGLang, TGI, oel serve)
    prefix_cache.py    the prefix KV store
    sampling.py        derive_seed (THE named random streams) and the per-row Gumbel-max sampler
    tiny.py            a tiny random chat model for tests and smoke runs

Importing the package imports none of them, so `oel.backends.base` (what the HTTP protocol and
the report need) stays free of torch.
"""
