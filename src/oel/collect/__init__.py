"""Rollout: generation backends and the user-side collection of trajectories.

    backend.py         ChatBackend protocol, SamplingParams, Generation
    hf_backend.py      HFBackend: an in-process transformers model, batched, per-row seeded
    openai_backend.py  OpenAIBackend: any OpenAI-compatible endpoint (vLLM, llama.cpp, SGLang, TGI)
    server.py          ChatServer / `oel serve`: an OpenAI-compatible server over HFBackend
    collect.py         play_episodes / collect / `oel collect`: batched, resumable play
    sampling.py        derive_seed and the per-row Gumbel-max sampler
    tiny.py            a tiny random chat model for tests and smoke runs
"""
