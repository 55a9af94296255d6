"""The collect stage (user side): the model plays episodes; trajectories are written as they end.

    play.py            CollectConfig + collect(config, backend, env=, maps=, out=) / CollectCommandConfig
                       (`oel collect`): which maps, resumable JSONL output
                       (the batched play itself is oel.rollout, shared with evaluation)
    importers/         `oel import-logs`: LiteLLM / Langfuse / OTel GenAI / OpenAI logs -> trajectories
    cli.py             `oel collect`, `oel import-logs`

Where responses come from is the shared layer below the stages (oel.backends); `oel serve`
is oel.serving.
"""
