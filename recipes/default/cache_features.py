"""Cache frozen streaming Whisper features for a manifest (several of these may run side by side).

    python recipes/default/cache_features.py /work/data/train.jsonl /work/runs/default/feats/c240_rc720_hop480/train \
        --right-context-ms 720 --hop-ms 480 --worker 0 --workers 2
"""

import argparse
import json
import time

import torch

from reallm_cli.model.whisper_file import load_whisper_encoder
from reallm_cli.train.feature_cache import build_cache


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest")
    ap.add_argument("out")
    ap.add_argument("--encoder", default="/work/cache/whisper-base-encoder.safetensors")
    ap.add_argument("--chunk-ms", type=int, default=240)
    ap.add_argument("--right-context-ms", type=int, default=0)
    ap.add_argument("--hop-ms", type=int, default=0)
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--complete-only", action="store_true")
    ap.add_argument("--limit", type=int, default=None, help="only the first N utterances")
    args = ap.parse_args()
    torch.set_num_threads(1)
    enc = load_whisper_encoder(args.encoder, chunk_ms=args.chunk_ms, right_context_ms=args.right_context_ms,
                               hop_ms=args.hop_ms)
    entries = [json.loads(line) for line in open(args.manifest) if line.strip()][: args.limit]
    build_cache(entries, enc, args.out, complete_only=args.complete_only, worker=args.worker,
                n_workers=args.workers, log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))


if __name__ == "__main__":
    main()
