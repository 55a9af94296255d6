#!/bin/bash
# A teacher-gap search row (docs/results/teacher-gap-search): the 1.5B extracts lessons from 8 extraction games;
# a teacher reads those lessons after the board; meter on round 1's training maps (never held-out).
# Usage: [GAME=frozenlake|sokoban] [GAMES=8] [PLAYER=<model>] [PROMPT=<template>] [RECORD=full|compact|tally] [TEACHER=<model>] reason-rules.sh [OUT_DIR]
#   PLAYER plays the extraction games (default the 0.5B); PROMPT is the extraction template (default
#   extract_reason_rules_v1); RECORD how each game is shown to the extractor (default full); TEACHER reads
#   the lessons (default the 1.5B); GAME the game played and metered (default frozenlake); GAMES how many extraction games (default 8). Each step resumes (collect skips the games on file, extract the steps done).
set -euo pipefail
O=${OEL:-oel}
G=${GAME:-frozenlake}
N=${GAMES:-8}
D=${1:-runs/reason-rules}
mkdir -p $D

[ -f $D/games.jsonl ] && [ $(wc -l < $D/games.jsonl) -ge $N ] || $O collect env.game=$G model.name=${PLAYER:-qwen2.5-coder-0.5b-instruct} seeds=extract round=0 num_seeds=$N \
   sampling.temperature=0.7 sampling.top_p=0.8 sampling.top_k=20 sampling.max_new_tokens=48 out=$D/games.jsonl
$O extract trajectories=$D/games.jsonl out_dir=$D/store num_runs=1 num_trajectories=$N prompt=${PROMPT:-extract_reason_rules_v1} \
   record=${RECORD:-full} extractor.model.name=qwen2.5-coder-1.5b-instruct sampling.max_new_tokens=400 budget_tokens=512 near_duplicate=0.7
K=$(ls $D/store/round_000/run_00/step_*.txt | sort | tail -1)
cp $K $D/lessons.txt
$O meter env.game=$G teacher_model=${TEACHER:-qwen2.5-coder-1.5b-instruct} knowledge_file=$D/lessons.txt \
   teacher_template=teacher_grid_after_v1 seeds=collect round=1 max_layouts=12 out=$D/meter.json
