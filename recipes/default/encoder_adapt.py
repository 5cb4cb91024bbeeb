"""Recipe code (adapt_encoder.py): adapting the top blocks of a chunk-causal Whisper encoder to its mask, by distillation.

Whisper was trained with full attention over 30 s; cut into 240 ms chunks that see no future, its
features drift from what its own layers expect. The fix needs no transcripts: train the top blocks
(chunk-causal, as they stream) so that their output matches the original full-attention encoder's
output on the same audio. Both sides are cached once per utterance: the causal input of the first
adapted block (``encode_hidden``) and the full-attention output (``encode_full_attention``); training
then runs only the adapted blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reallm_cli.model.whisper_encoder import WhisperStreamingEncoder
from reallm_cli.train.feature_cache import FeatureStore, atomic_save_npy, atomic_write_text, encode_audio, stream_mel


def encode_hidden(encoder: WhisperStreamingEncoder, audio: np.ndarray, start: int) -> torch.Tensor:
    """Chunk-causal input of block ``start`` for one utterance: (T, D)."""
    mel = stream_mel(audio)
    with torch.inference_mode():
        hidden, _ = encoder.forward_hidden(mel, torch.tensor([mel.shape[1]]), upto=start)
    return hidden[start][0]


def encode_full_attention(encoder: WhisperStreamingEncoder, audio: np.ndarray) -> torch.Tensor:
    """The original (full-attention) encoder's output for one utterance of at most 30 s: (T, D)."""
    return encode_audio(encoder, audio, full_attention=True)


@dataclass
class DistillBatch:
    hidden: torch.Tensor  # (B, T, D) float32, input of the first adapted block
    target: torch.Tensor  # (B, T, D) float32, full-attention output
    lengths: torch.Tensor  # (B,)
    audio_s: float


def make_distill_batch(hidden: FeatureStore, target: FeatureStore, pairs: list[tuple[int, int]],
                       frame_s: float = 0.02) -> DistillBatch:
    """Pairs of (index in ``hidden``, index in ``target``) of the same utterance -> one padded batch."""
    hs = [hidden.frames(i) for i, _ in pairs]
    ts = [target.frames(j) for _, j in pairs]
    for (i, j), h, t in zip(pairs, hs, ts):
        if h.shape != t.shape:
            raise ValueError(f"utterance {hidden.items[i].id}: hidden {h.shape} and target {t.shape} differ")
    t_max = max(h.shape[0] for h in hs)
    d = hidden.dim
    hb = np.zeros((len(pairs), t_max, d), np.float32)
    tb = np.zeros((len(pairs), t_max, d), np.float32)
    for b, (h, t) in enumerate(zip(hs, ts)):
        hb[b, : len(h)] = h
        tb[b, : len(t)] = t
    lengths = torch.tensor([len(h) for h in hs])
    return DistillBatch(torch.from_numpy(hb), torch.from_numpy(tb), lengths, float(lengths.sum()) * frame_s)


def distill_loss(encoder: WhisperStreamingEncoder, start: int, batch: DistillBatch) -> tuple[torch.Tensor, dict]:
    """Mean squared error per frame and channel between the adapted top blocks' output and the target,
    over valid frames; stats include the error relative to the target's energy."""
    out = encoder.forward_top(batch.hidden, batch.lengths, start)
    valid = (torch.arange(out.shape[1])[None, :] < batch.lengths[:, None]).to(out.dtype)[..., None]
    n = valid.sum() * out.shape[-1]
    err = ((out - batch.target) ** 2 * valid).sum()
    loss = err / n
    rel = float(err.detach() / (batch.target**2 * valid).sum().clamp_min(1e-9))
    return loss, {"rel_err": rel, "audio_s": batch.audio_s}


def relative_error(encoder: WhisperStreamingEncoder, audio: np.ndarray) -> float:
    """||streaming output - full-attention output||^2 / ||full-attention output||^2 on one utterance."""
    mel = stream_mel(audio)
    n = torch.tensor([mel.shape[1]])
    with torch.inference_mode():
        causal, _ = encoder.forward(mel, n)
        full, _ = encoder.forward(mel, n, full_attention=True)
    return float(((causal - full) ** 2).sum() / (full**2).sum())


def rerun_top(encoder: WhisperStreamingEncoder, start: int, hidden_dir, out_dir, batch_frames: int = 8000) -> int:
    """Final features of every utterance cached in ``hidden_dir`` (inputs of block ``start``), through the
    (adapted) top blocks, into ``out_dir`` with the same shard layout; finished shards are skipped.
    Returns the number of utterances written."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = 0
    for idx in sorted(Path(hidden_dir).glob("shard_*.jsonl")):
        npy_in = idx.with_suffix(".npy")
        npy_out, idx_out = out / npy_in.name, out / idx.name
        rows = [json.loads(line) for line in idx.read_text().splitlines()]
        done += len(rows)
        if npy_out.exists() and idx_out.exists():
            continue
        frames = np.load(npy_in, mmap_mode="r")
        result = np.zeros(frames.shape, np.float16)
        group: list[dict] = []

        def flush() -> None:
            t_max = max(r["n_frames"] for r in group)
            h = np.zeros((len(group), t_max, frames.shape[1]), np.float32)
            for b, r in enumerate(group):
                h[b, : r["n_frames"]] = frames[r["offset"] : r["offset"] + r["n_frames"]]
            lengths = torch.tensor([r["n_frames"] for r in group])
            with torch.inference_mode():
                y = encoder.forward_top(torch.from_numpy(h), lengths, start).numpy()
            for b, r in enumerate(group):
                result[r["offset"] : r["offset"] + r["n_frames"]] = y[b, : r["n_frames"]]
            group.clear()

        for r in sorted(rows, key=lambda r: r["n_frames"]):  # similar lengths together: little padding
            if group and (len(group) + 1) * max(r["n_frames"], group[-1]["n_frames"]) > batch_frames:
                flush()
            group.append(r)
        if group:
            flush()
        atomic_save_npy(npy_out, result)
        atomic_write_text(idx_out, idx.read_text())
    return done
