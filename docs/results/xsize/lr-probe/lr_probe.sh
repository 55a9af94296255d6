#!/usr/bin/env bash
# Why does the student go past its teacher's [down] share? Round 0 of
# configs/xsize/xsize-handwritten-mixed.yaml consolidated again on the same prefixes with the same
# lr x steps product at two step sizes (lr 1e-4 x 6, the loop's; lr 2.5e-5 x 24), each student
# then metered against M_0 on the held-out probe states; and the teacher, the control and both
# students metered on the states consolidation trained on (the round's own games, `visited=`).
# Needs round 0 of runs/xsize-handwritten-mixed (oel loop configs/xsize/xsize-handwritten-mixed.yaml) or
# of runs/xsize-handwritten-smallstep (the same round-0 games: TRAIN=runs/xsize-handwritten-smallstep/...).
# Resumable: every finished model and meter file is kept.  ~35 min on an idle 2-core CPU.
set -euo pipefail
O=${OEL:-.venv/bin/oel}; D=${1:-runs/lr-probe}; mkdir -p "$D"
TRAIN=${TRAIN:-runs/xsize-handwritten-mixed/round_0/collect/train.jsonl}
LESSONS=configs/knowledge/frozenlake-handwritten.txt
CONS="trajectories=$TRAIN knowledge=[$LESSONS] model.dtype=float32 teacher_dtype=bfloat16
  teacher_model=qwen2.5-coder-1.5b-instruct teacher_template=teacher_grid_after_v1 batch_size=4
  micro_batch_size=4 max_new_tokens=48"
METER="model.dtype=float32 max_layouts=12"
# the teacher consolidation read, and its control, where the student actually played
[ -f "$D/visited-teacher.json" ] || $O meter $METER visited=$TRAIN teacher_model=qwen2.5-coder-1.5b-instruct \
  teacher_template=teacher_grid_after_v1 knowledge_file=$LESSONS out="$D/visited-teacher.json"
for spec in "1e-4 6" "2.5e-5 24"; do
  set -- $spec; n=lr$1-steps$2
  [ -f "$D/$n/model/config.json" ] || $O consolidate $CONS lr=$1 steps=$2 output_dir="$D/$n"
  rm -rf "$D/$n/checkpoints"   # float32 checkpoints fill the disk; the final model is what is metered
  [ -f "$D/meter-$n.json" ] || $O meter $METER teacher_model="$D/$n/model" teacher_template=policy_grid_v1 \
    seeds=heldout out="$D/meter-$n.json"
  [ -f "$D/visited-$n.json" ] || $O meter $METER visited=$TRAIN teacher_model="$D/$n/model" \
    teacher_template=policy_grid_v1 out="$D/visited-$n.json"
done
