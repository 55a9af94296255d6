#!/bin/bash
# float32 against bfloat16 consolidation on the same steps (issue #16, item 5): the quick start's round 0
# (the 0.5B's 16 training games, its own K=2 lessons, the 1.5B teacher reading them after the board,
# 6 steps of 4 prefixes, LoRA, lr 1e-4), consolidated in float32 and in bf16 with everything else equal;
# then the exact meter on 12 held-out maps, each M_1 against M_0 (all scored in bf16).
# A third run, mixed, keeps the student float32 and loads only the frozen teacher in bf16 (teacher_dtype).
# SEEDS="0 1 2" repeats every run with consolidation seeds 1 and 2 (the prefixes drawn and the student's samples).
# Usage: [SEEDS="0 1 2"] [ONLY="mixed ..."] precision.sh [OUT_DIR]; every step resumes or is skipped when its result is on file.
set -euo pipefail
O=${OEL:-oel}
D=${1:-runs/precision}
mkdir -p $D
S="sampling.temperature=0.7 sampling.top_p=0.8 sampling.top_k=20"
CONS="teacher_model=qwen2.5-coder-1.5b-instruct teacher_template=teacher_grid_after_v1 steps=6 batch_size=4 micro_batch_size=4 max_new_tokens=48 lr=1.0e-4"

[ -f $D/games.jsonl ] && [ $(wc -l < $D/games.jsonl) -ge 16 ] || $O collect seeds=collect round=0 num_seeds=16 batch_size=16 $S sampling.max_new_tokens=48 out=$D/games.jsonl
[ -f $D/extract-games.jsonl ] && [ $(wc -l < $D/extract-games.jsonl) -ge 4 ] || $O collect seeds=extract round=0 num_seeds=4 $S sampling.max_new_tokens=48 out=$D/extract-games.jsonl
$O extract trajectories=$D/extract-games.jsonl out_dir=$D/store num_runs=2 num_trajectories=4 budget_tokens=512 \
   $S sampling.max_new_tokens=160
L0=$D/store/round_000/run_00/step_004.txt; L1=$D/store/round_000/run_01/step_004.txt
# name: the dtype overrides; mixed = a float32 student with the frozen 1.5B teacher in bf16
declare -A RUNS=([bfloat16]="model.dtype=bfloat16" [float32]="model.dtype=float32"
                 [mixed]="model.dtype=float32 teacher_dtype=bfloat16")
for seed in ${SEEDS:-0}; do
  for name in ${ONLY:-bfloat16 float32 mixed}; do
    run=$name$([ $seed = 0 ] || echo "-s$seed")   # seed 0 keeps the plain names
    [ -f $D/$run/model/config.json ] || $O consolidate trajectories=$D/games.jsonl knowledge=[$L0,$L1] output_dir=$D/$run \
        ${RUNS[$name]} seed=$seed $CONS
    [ -f $D/meter-$run.json ] || $O meter teacher_model=$D/$run/model teacher_template=policy_grid_v1 seeds=heldout \
        max_layouts=12 out=$D/meter-$run.json   # every M_1 scored in bf16, how the loop serves them
  done
done
