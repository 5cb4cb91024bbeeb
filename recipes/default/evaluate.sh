#!/usr/bin/env bash
# The model card's measurements of one model, every figure through `reallm eval` (streaming, 240 ms, greedy):
#   recipes/default/evaluate.sh MODEL OUTDIR [DATA] [PRECISION]
# dev-real (real speech; emission delay against offline Whisper base's word times, written by
# scripts/baseline_whisper.py and kept beside this script), jfk through `reallm transcribe`,
# and the synthetic held-out voice and held-out text sets made by make_data.py (DATA: by default
# runs/default/synthetic-data under the repository, where base_synthetic.sh has it made).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
MODEL=$1 OUT=$2 DATA=${3:-$REPO/runs/default/synthetic-data} PRECISION=${4:-fp32}
SHARED=$(cd "$REPO/.." && pwd)/shared/data
REF=$(dirname "$0")/ref_word_times/dev-real.jsonl
mkdir -p "$OUT"
align=()
[ -f "$REF" ] && align=(--alignments "$REF")
reallm eval "$SHARED/dev-real/manifest.jsonl" --model "$MODEL" --precision "$PRECISION" "${align[@]}" \
    --json "$OUT/dev_real.json" | tee "$OUT/dev_real.txt"
reallm transcribe "$SHARED/dev-real/jfk.flac" --model "$MODEL" --precision "$PRECISION" | tee "$OUT/jfk.txt"
for set in heldout_voice heldout_text; do
    reallm eval "$DATA/$set.jsonl" --model "$MODEL" --precision "$PRECISION" --group-by none \
        --json "$OUT/$set.json" | tee "$OUT/$set.txt"
done
