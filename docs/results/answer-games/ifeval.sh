#!/bin/bash
# IF-Eval (the first 100 prompts, greedy, 128 new tokens: the protocol of docs/results/xsize) for the
# Blackjack 1.5B runs: M_0, the main run's last model, and the last model of each of its variants
# that has been run (the unrelated-lessons control, the off-policy and other-extractor ablations).
# Run after `oel loop configs/blackjack/bj-1.5b.yaml` and the variants' configs. Each evaluation is
# resumable (a finished one is not redone). Pair two of them with docs/results/xsize/ifeval_paired.py.
# Usage: ifeval.sh [RUNS_DIR] [LAST_ROUND]
set -euo pipefail
O=${OEL:-oel}
R=${1:-runs}
L=${2:-2}
P="env.game=blackjack games.enabled=false meter.enabled=false ifeval.num_prompts=100 ifeval.max_new_tokens=128"
$O evaluate model.name=qwen2.5-coder-1.5b-instruct $P out_dir=$R/bj-eval/M0
[ -d $R/bj-1.5b/round_$L/consolidate/model ] && $O evaluate model.name=$R/bj-1.5b/round_$L/consolidate/model $P out_dir=$R/bj-eval/M$((L+1))
for V in control off-policy other-extractor; do
  M=$R/bj-1.5b-$V/round_$L/consolidate/model
  if [ -d "$M" ]; then $O evaluate model.name=$M $P out_dir=$R/bj-eval/M$((L+1))-$V; fi
done
