#!/usr/bin/env bash
# The base model of the default recipe from nothing but synthetic voices and pseudo-labelled speech
# (~7 h on 2 CPU cores; run.sh's stage 3 with BASE=synthetic runs it). The projector and decoder train
# directly over the original Whisper base encoder in right-context mode (720 ms ahead, 480 ms hops), the
# encoder mode the model ships with.
#   nohup recipes/default/base_synthetic.sh [DATA] [WORK] > base.log 2>&1 &
# DATA (made by make_data.py) and WORK default to runs/default/synthetic-data and runs/default/synthetic
# under the repository; ENCODER (an imported encoder file, made here if absent, or a model file whose
# encoder to reuse) to runs/default/whisper-base-encoder.safetensors, where run.sh's stage 0 puts it.
# Every stage skips what it already finished, so after a kill the same command resumes.
# The model lands in WORK/model.safetensors.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
DATA=${1:-$REPO/runs/default/synthetic-data} WORK=${2:-$REPO/runs/default/synthetic}
ENCODER=${ENCODER:-$REPO/runs/default/whisper-base-encoder.safetensors}
mkdir -p "$DATA" "$WORK" "$(dirname "$ENCODER")"
# absolute: the commands below run from the repository's root
DATA=$(cd "$DATA" && pwd) WORK=$(cd "$WORK" && pwd) ENCODER=$(cd "$(dirname "$ENCODER")" && pwd)/$(basename "$ENCODER")
cd "$REPO"
HOURS=${HOURS:-40} REAL_COPIES=${REAL_COPIES:-9}
RIGHT_CONTEXT_MS=${RIGHT_CONTEXT_MS:-720} HOP_MS=${HOP_MS:-480}  # the encoder's schedule, as shipped
TEACHER_STEPS=${TEACHER_STEPS:-3000} REALLM_STEPS=${REALLM_STEPS:-5000} REALLM_LR=${REALLM_LR:-5e-4}
DROPOUT=${DROPOUT:-0.2}  # decoder dropout and dropout on the encoder frames, in ReaLLM training
EMIT_DELAY=${EMIT_DELAY:-1}  # chunks the decoder waits before writing a word: 0 is 240 ms sooner, less accurate
DECODER_INIT=${DECODER_INIT:-whisper-tiny.en}  # or "none": a decoder trained from nothing (SentencePiece 512)
SLOTS=${SLOTS:-3}  # speech embeddings per 240 ms chunk (the paper: 1)
WORDNET_HOURS=${WORDNET_HOURS:-32}  # hours of WordNet usage examples on top (32: all of them; apt-get install wordnet-base)
CHAT_HOURS=${CHAT_HOURS:-3}  # hours of chatterbot-corpus conversations on top (about 2.7 h is all of them)
PROJECTOR_HIDDEN=${PROJECTOR_HIDDEN:-1536}  # >0: a GELU layer of this width in the projector (0: linear, the paper's)
BF16=${BF16:-0}  # 1: bf16 autocast in training (1.7x faster ReaLLM steps on CPUs with AVX512-BF16 or AMX)
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

stamp "data ($HOURS h)"
python recipes/default/make_data.py --out "$DATA" --hours "$HOURS" --real-copies "$REAL_COPIES" \
    --wordnet-hours "$WORDNET_HOURS" --chat-hours "$CHAT_HOURS" --jobs 2
stamp "import Whisper base encoder"
[ -f "$ENCODER" ] || python scripts/import_whisper.py --model base --dtype float32 --out "$ENCODER"
stamp "features, tokenizers, CTC teacher, alignment, ReaLLM ($DECODER_INIT), export"
python recipes/default/train.py --data "$DATA" --work "$WORK" --encoder "$ENCODER" \
    --right-context-ms "$RIGHT_CONTEXT_MS" --hop-ms "$HOP_MS" --teacher-steps "$TEACHER_STEPS" \
    --decoder-init "$DECODER_INIT" --reallm-steps "$REALLM_STEPS" --reallm-lr "$REALLM_LR" \
    --dropout "$DROPOUT" --feat-dropout "$DROPOUT" --emit-delay-chunks "$EMIT_DELAY" --slots-per-chunk "$SLOTS" \
    --projector-hidden "$PROJECTOR_HIDDEN" --out "$WORK/model.safetensors" $([ "$BF16" = 1 ] && echo --bf16)
stamp done
