#!/bin/bash
# Finding (b): M_0 with its own round-0 lessons in context, through the loop's own in-context
# evaluation (the teacher's prompt, map j reads lesson text j mod K). It reruns round 0 of
# bj-1.5b.yaml with in_context_eval=true, copying the main run's collect and extract, and stops
# once that evaluation is complete (the consolidation it starts next is not needed).
# Usage, from the repository root after `oel loop configs/blackjack/bj-1.5b.yaml`: in_context.sh [OEL]
O=${1:-oel}
$O loop configs/blackjack/bj-1.5b.yaml run_dir=runs/bj-1.5b-icl in_context_eval=true reuse_from=runs/bj-1.5b &
pid=$!
while [ ! -f runs/bj-1.5b-icl/round_0/evaluate/_complete.json ] && kill -0 $pid 2>/dev/null; do sleep 5; done
kill $pid 2>/dev/null; wait $pid
rm -rf runs/bj-1.5b-icl/round_0/consolidate
