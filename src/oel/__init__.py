"""oel: Online Experiential Learning for language models.

The loop: collect trajectories (collect) -> extract experiential knowledge (extract)
-> consolidate it into the weights by on-policy context distillation (consolidate) ->
evaluate -> redeploy. See README.md.
"""

__version__ = "0.1.0"
