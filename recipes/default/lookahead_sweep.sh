#!/usr/bin/env bash
# Look-ahead comparison: the default recipe (frozen encoder) at 0, 240 and 480 ms look-ahead, each on the same
# ~1.1 h subset (real pseudo-labelled + synthetic) with the same small budget, evaluated the same way.
#   bash recipes/default/lookahead_sweep.sh [DATA] [WORK]    (the three settings side by side, one thread each)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-/work/data}
WORK=${2:-/work/runs/sweep}
mkdir -p "$WORK/data"
# every 4th real utterance and every 10th synthetic one, in manifest order (deterministic)
python3 - "$DATA/train.jsonl" "$WORK/data/train.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
real = [r for r in rows if r["id"].startswith("real_")][::4]
synth = [r for r in rows if not r["id"].startswith("real_")][::10]
with open(sys.argv[2], "w") as f:
    for r in real + synth:
        f.write(json.dumps(r) + "\n")
print(f"subset: {len(real)} real + {len(synth)} synthetic, {sum(r['duration'] for r in real + synth) / 3600:.2f} h")
PY
run() {
    la=$1
    python3 recipes/default/train.py --data "$WORK/data" --work "$WORK/la$la" --lookahead-ms "$la" --threads 1 \
        --teacher-steps 400 --reallm-steps 1000 --out "$WORK/la$la.safetensors" > "$WORK/la$la.log" 2>&1
    reallm eval /work/shared/data/dev-real/manifest.jsonl --model "$WORK/la$la.safetensors" --threads 1 \
        --alignments /work/runs/baseline_devreal/ref_word_times.jsonl --json "$WORK/la$la.eval.json" \
        > "$WORK/la$la.eval.txt" 2>&1
}
run 0 & run 240 & run 480 & wait
grep -H "all\|delay" "$WORK"/la*.eval.txt
