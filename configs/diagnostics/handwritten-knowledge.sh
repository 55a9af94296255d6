#!/bin/bash
# Diagnostic for the CPU reproduction: is the bottleneck the lessons or their consolidation?
# Replaces the model's own lessons with hand-written, map-independent ones
# (configs/knowledge/frozenlake-handwritten.txt) and runs round 0's consolidation with them,
# on the same training trajectories and settings as configs/frozenlake/fl-0.5b.yaml. Compare:
#   M0 without / with the hand-written lessons in context (the ceiling consolidation aims at),
#   M1 (consolidated on them) without any lessons in context.
# Usage: configs/diagnostics/handwritten-knowledge.sh [MAIN_RUN_DIR] [OUT_DIR]; every step resumes.
set -euo pipefail
MAIN=${1:-runs/fl-0.5b}
OUT=${2:-runs/diagnostic-handwritten}
KNOWLEDGE=${KNOWLEDGE:-configs/knowledge/frozenlake-handwritten.txt}
OEL=${OEL:-oel}
GAMES="games.num_maps=64 games.sampling_seeds=[0] games.sampling.temperature=0.7 games.sampling.top_p=0.8 games.sampling.top_k=20 games.sampling.max_new_tokens=48"
[ -f "$MAIN/round_0/collect/_complete.json" ] || { echo "$MAIN: round 0 collection not complete; run configs/frozenlake/fl-0.5b.yaml first" >&2; exit 2; }
[ -f "$OUT/m0/evaluation.json" ] || $OEL evaluate $GAMES knowledge_file=$KNOWLEDGE ifeval.enabled=false out_dir=$OUT/m0
[ -d "$OUT/consolidate/model" ] || $OEL consolidate trajectories=$MAIN/round_0/collect/train.jsonl \
  "knowledge=[$KNOWLEDGE]" output_dir=$OUT/consolidate steps=12 batch_size=8 micro_batch_size=4 \
  max_new_tokens=48 lr=1.0e-4 save_every=4 on_existing=resume
[ -f "$OUT/m1/evaluation.json" ] || $OEL evaluate model.name=$OUT/consolidate/model $GAMES \
  ifeval.enabled=false out_dir=$OUT/m1
