#!/bin/bash
# The full held-out protocol of issue #16 for M_0 and for M_3 of the main run and of its control:
# 128 held-out maps x 3 sampling seeds (T=0.7, top_p 0.8, top_k 20), IF-Eval on 100 prompts, the
# exact meter on 12 held-out maps; the same for M_3 of the raw-trajectory ablation and, when it was run
# (`oel loop configs/xsize/xsize-handwritten.yaml`, `... xsize-handwritten-mixed.yaml`), of the hand-written-lessons
# upper bound, of its float32-student run and of its small-step run and that run's control; and the
# frozen 1.5B teacher's own play, with and without the hand-written lessons. Every M_3 is served in bf16. Run after `oel loop
# configs/xsize/xsize.yaml`, `oel loop configs/xsize/xsize-control.yaml` and `oel loop configs/xsize/xsize-raw.yaml`.
# Each evaluation is resumable (oel evaluate's key). Pair two IF-Evals with ifeval_paired.py, two meters with
# meter_paired.py.
# Usage: evaluate.sh [RUNS_DIR]
set -euo pipefail
O=${OEL:-oel}
R=${1:-runs}
P="games.num_maps=128 games.sampling_seeds=[0,1,2] games.sampling.temperature=0.7 games.sampling.top_p=0.8 \
   games.sampling.top_k=20 games.sampling.max_new_tokens=48 games.batch_size=32 ifeval.num_prompts=100 \
   ifeval.max_new_tokens=128 meter.max_layouts=12"
$O evaluate model.name=qwen2.5-coder-0.5b-instruct $P out_dir=$R/xsize-eval/M0
$O evaluate model.name=$R/xsize/round_2/consolidate/model $P out_dir=$R/xsize-eval/M3
$O evaluate model.name=$R/xsize-control/round_2/consolidate/model $P out_dir=$R/xsize-eval/M3-control
$O evaluate model.name=$R/xsize-raw/round_2/consolidate/model $P out_dir=$R/xsize-eval/M3-raw
for run in handwritten handwritten-mixed handwritten-smallstep control-smallstep; do   # when they were run
  if [ -d $R/xsize-$run/round_2/consolidate/model ]; then
    $O evaluate model.name=$R/xsize-$run/round_2/consolidate/model $P out_dir=$R/xsize-eval/M3-$run
  fi
done
# the teacher itself at play: the frozen 1.5B without lessons and reading the hand-written lessons
# after the board (the teacher every hand-written run distilled), the same 384 games
$O evaluate model.name=qwen2.5-coder-1.5b-instruct $P ifeval.enabled=false meter.enabled=false \
  knowledge_file=configs/knowledge/frozenlake-handwritten.txt games.knowledge_template=teacher_grid_after_v1 \
  out_dir=$R/xsize-eval/teacher-1.5b-handwritten
