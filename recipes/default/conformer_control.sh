#!/usr/bin/env bash
# The control: the paper's from-scratch chunk-causal Conformer (preset "small") trained on the same subset as
# the look-ahead sweep (run lookahead_sweep.sh first; it writes WORK/data/train.jsonl), through the recipe's
# commands, with a wall-clock budget like one sweep setting (one thread), and evaluated the same way.
#   bash recipes/default/conformer_control.sh [WORK] [TEACHER_STEPS] [REALLM_STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-/work/runs/sweep}
TS=${2:-250}
RS=${3:-200}
C="$WORK/conformer"
mkdir -p "$C"
M="$WORK/data/train.jsonl"
{
    time reallm train tokenizer --manifest "$M" --vocab 512 -o "$C/tok.model"
    time reallm train teacher --manifest "$M" --tokenizer "$C/tok.model" --preset small -o "$C/teacher.pt" \
        --steps "$TS" --max-batch-s 60 --threads 1 --log-every 25
    time reallm align --manifest "$M" --teacher "$C/teacher.pt" -o "$C/align.jsonl" --json "$C/align.json" --threads 1
    time reallm train reallm --manifest "$M" --alignments "$C/align.jsonl" --tokenizer "$C/tok.model" --preset small \
        --init-encoder "$C/teacher.pt" -o "$C/model.safetensors" --steps "$RS" --max-batch-s 60 --threads 1 --log-every 25
    reallm eval /work/shared/data/dev-real/manifest.jsonl --model "$C/model.safetensors" --threads 1 \
        --alignments /work/runs/baseline_devreal/ref_word_times.jsonl --json "$C/eval.json"
} > "$C/log.txt" 2>&1
tail -n 15 "$C/log.txt"
