#!/usr/bin/env bash
# The base model of the default recipe from nothing but synthetic voices and pseudo-labelled speech
# (~7 h on 2 CPU cores): run.sh's stage 3 with BASE=synthetic runs it, then puts the original Whisper
# encoder under its decoder in right-context mode (swap_encoder.py).
#   nohup recipes/default/base_synthetic.sh [DATA] [WORK] > base.log 2>&1 &
# Every stage skips what it already finished, so after a kill the same command resumes.
# The model lands in WORK/model.safetensors.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-/work/data} WORK=${2:-/work/runs/default}
ENCODER=${ENCODER:-/work/cache/whisper-base-encoder.safetensors}
HOURS=${HOURS:-40} REAL_COPIES=${REAL_COPIES:-9} START=${START:-2} ADAPT_STEPS=${ADAPT_STEPS:-700}
TEACHER_STEPS=${TEACHER_STEPS:-3000} REALLM_STEPS=${REALLM_STEPS:-5000} REALLM_LR=${REALLM_LR:-5e-4}
DROPOUT=${DROPOUT:-0.2}  # decoder dropout and dropout on the encoder frames, in ReaLLM training
EMIT_DELAY=${EMIT_DELAY:-1}  # chunks the decoder waits before writing a word: 0 is 240 ms sooner, less accurate
DECODER_INIT=${DECODER_INIT:-whisper-tiny.en}  # or "none": a decoder trained from nothing (SentencePiece 512)
SLOTS=${SLOTS:-3}  # speech embeddings per 240 ms chunk (the paper: 1)
WORDNET_HOURS=${WORDNET_HOURS:-32}  # hours of WordNet usage examples on top (32: all of them; apt-get install wordnet-base)
CHAT_HOURS=${CHAT_HOURS:-3}  # hours of chatterbot-corpus conversations on top (about 2.7 h is all of them)
PROJECTOR_HIDDEN=${PROJECTOR_HIDDEN:-1536}  # >0: a GELU layer of this width in the projector (0: linear, the paper's)
KD_WEIGHT=${KD_WEIGHT:-0}  # >0: each piece's target mixes in offline Whisper tiny.en's distribution (softlabels stage)
ENCODER_FROM_MODEL=${ENCODER_FROM_MODEL:-}  # a model file whose adapted encoder to reuse (skips import and adaptation)
BF16=${BF16:-0}  # 1: bf16 autocast in training (1.7x faster ReaLLM steps on CPUs with AVX512-BF16 or AMX)
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

stamp "data ($HOURS h)"
python recipes/default/make_data.py --out "$DATA" --hours "$HOURS" --real-copies "$REAL_COPIES" \
    --wordnet-hours "$WORDNET_HOURS" --chat-hours "$CHAT_HOURS" --jobs 2
if [ -n "$ENCODER_FROM_MODEL" ]; then
    # the adapted encoder of a model trained before (e.g. weights/reallm-default.safetensors): no adaptation,
    # train.py's features stage encodes the data with it
    adapted=$ENCODER_FROM_MODEL stages=features,tokenizer
else
    stamp "import Whisper base encoder"
    [ -f "$ENCODER" ] || python scripts/import_whisper.py --model base --out "$ENCODER"
    adapt=(python recipes/default/adapt_encoder.py --manifest "$DATA/train.jsonl" --work "$WORK"
           --encoder "$ENCODER" --start "$START")
    stamp "encoder cache (2 workers)"
    "${adapt[@]}" --stages cache --worker 0 --workers 2 &
    worker0=$!
    "${adapt[@]}" --stages cache --worker 1 --workers 2
    wait "$worker0"  # a failed worker stops the recipe (a bare `wait` would return 0)
    stamp "encoder adaptation ($ADAPT_STEPS steps), features, export"
    "${adapt[@]}" --stages train,features,export --steps "$ADAPT_STEPS" --threads 2
    adapted=$WORK/encoder.safetensors stages=tokenizer
fi
stamp "tokenizers, CTC teacher, alignment, ReaLLM ($DECODER_INIT), export"
python recipes/default/train.py --data "$DATA" --work "$WORK" --encoder "$adapted" \
    --stages $stages,teacher,align,retokenize,softlabels,reallm,export --teacher-steps "$TEACHER_STEPS" \
    --decoder-init "$DECODER_INIT" --reallm-steps "$REALLM_STEPS" --reallm-lr "$REALLM_LR" --lm-steps 0 \
    --dropout "$DROPOUT" --feat-dropout "$DROPOUT" --emit-delay-chunks "$EMIT_DELAY" --slots-per-chunk "$SLOTS" \
    --kd-weight "$KD_WEIGHT" --projector-hidden "$PROJECTOR_HIDDEN" \
    --out "$WORK/model.safetensors" $([ "$BF16" = 1 ] && echo --bf16)
stamp done
