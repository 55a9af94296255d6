#!/bin/bash
# IF-Eval (the first 100 prompts, greedy, 128 new tokens: the protocol of docs/results/xsize) for the
# Blackjack 1.5B runs: M_0, the main run's last model and the unrelated-lessons control's last model.
# Run after `oel loop configs/blackjack/bj-1.5b.yaml` and `... bj-1.5b-control.yaml`. Each evaluation is
# resumable. Pair two of them with docs/results/xsize/ifeval_paired.py.
# Usage: ifeval.sh [RUNS_DIR] [LAST_ROUND]
set -euo pipefail
O=${OEL:-oel}
R=${1:-runs}
L=${2:-2}
P="env.game=blackjack games.enabled=false meter.enabled=false ifeval.num_prompts=100 ifeval.max_new_tokens=128"
$O evaluate model.name=qwen2.5-coder-1.5b-instruct $P out_dir=$R/bj-eval/M0
[ -d $R/bj-1.5b/round_$L/consolidate/model ] && $O evaluate model.name=$R/bj-1.5b/round_$L/consolidate/model $P out_dir=$R/bj-eval/M$((L+1))
[ -d $R/bj-1.5b-control/round_$L/consolidate/model ] && \
  $O evaluate model.name=$R/bj-1.5b-control/round_$L/consolidate/model $P out_dir=$R/bj-eval/M$((L+1))-control
true
