"""oel: Online Experiential Learning for language models.

The loop: collect trajectories (rollout) -> extract experiential knowledge (experience)
-> consolidate it into the weights by on-policy context distillation (distill) ->
evaluate -> redeploy. See README.md.
"""

__version__ = "0.1.0"
