"""The ReaLLM model: speech embeddings per chunk, and a config that survives the model file."""

import pytest
import torch

from conftest import tiny_model
from reallm_cli.model.checkpoint import load_model, save_model
from reallm_cli.model.presets import placeholder_tokenizer
from reallm_cli.model.reallm import ChunkProjector, ReaLLMConfig


def test_one_slot_stacks_the_whole_chunk_and_pads_a_partial_one():
    proj = ChunkProjector(frames_per_chunk=4, enc_dim=3, d_model=5).eval()
    frames = torch.randn(2, 10, 3)  # 2.5 chunks
    out = proj(frames)
    assert out.shape == (2, 3, 5)
    padded = torch.cat([frames, torch.zeros(2, 2, 3)], 1)
    expected = proj.proj(proj.norm(padded.reshape(2, 3, 12)))
    torch.testing.assert_close(out, expected)


def test_each_slot_reads_only_its_slice_of_the_chunk():
    proj = ChunkProjector(frames_per_chunk=6, enc_dim=3, d_model=5, slots=3).eval()
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(1, 12, 3, generator=g)  # 2 chunks -> 6 slots in time order
    out = proj(frames)
    assert out.shape == (1, 6, 5)
    changed = frames.clone()
    changed[0, 8:10] += torch.randn(2, 3, generator=g)  # frames of chunk 1, slot 1 (embedding 4)
    diff = (proj(changed) - out).abs().amax(-1)[0]
    assert diff[4] > 0
    assert torch.all(diff[[0, 1, 2, 3, 5]] == 0)


def test_slots_must_divide_the_chunk():
    with pytest.raises(ValueError):
        ChunkProjector(frames_per_chunk=12, enc_dim=3, d_model=5, slots=5)
    with pytest.raises(ValueError):
        tiny_model(16, slots_per_chunk=0)


def test_slots_per_chunk_survives_the_model_file(tmp_path):
    tok = placeholder_tokenizer(16)
    model = tiny_model(tok.vocab_size, slots_per_chunk=2).eval()
    save_model(tmp_path / "m.safetensors", model, tok)
    loaded, _ = load_model(tmp_path / "m.safetensors")
    assert loaded.config.slots_per_chunk == 2
    frames = torch.randn(1, 13, model.encoder.out_dim)
    torch.testing.assert_close(loaded.speech_embeddings(frames), model.speech_embeddings(frames), atol=2e-2, rtol=1e-2)
    assert model.speech_embeddings(frames).shape[1] == 2 * model.chunk_lengths(torch.tensor([13])).item()


def test_an_old_config_without_slots_reads_as_one_slot():
    cfg = tiny_model(16).config.to_dict()
    del cfg["slots_per_chunk"]
    assert ReaLLMConfig.from_dict(cfg).slots_per_chunk == 1


def test_a_hidden_projector_layer_survives_the_model_file(tmp_path):
    from dataclasses import replace

    from reallm_cli.model.checkpoint import build_model

    tok = placeholder_tokenizer(16)
    model = build_model(replace(tiny_model(tok.vocab_size).config, projector_hidden=24)).eval()
    assert isinstance(model.projector.hidden[0], torch.nn.Linear) and model.projector.proj.in_features == 24
    save_model(tmp_path / "m.safetensors", model, tok, dtype=torch.float32)
    loaded, _ = load_model(tmp_path / "m.safetensors")
    assert loaded.config.projector_hidden == 24
    frames = torch.randn(1, 13, model.encoder.out_dim)
    torch.testing.assert_close(loaded.speech_embeddings(frames), model.speech_embeddings(frames))
    stacked = model.projector.norm(torch.nn.functional.pad(frames, (0, 0, 0, 5)).reshape(1, 3, -1))
    expected = model.projector.proj(torch.nn.functional.gelu(model.projector.hidden[0](stacked)))
    torch.testing.assert_close(model.speech_embeddings(frames), expected)


def test_an_old_config_without_projector_hidden_reads_as_linear():
    cfg = tiny_model(16).config.to_dict()
    del cfg["projector_hidden"]
    assert ReaLLMConfig.from_dict(cfg).projector_hidden == 0
    with pytest.raises(ValueError):
        ReaLLMConfig.from_dict(dict(cfg, projector_hidden=-1))


def test_averaged_model_file_holds_the_mean_of_the_weights(tmp_path):
    from reallm_cli.errors import ModelError
    from reallm_cli.model.checkpoint import average_models, model_extra

    tok = placeholder_tokenizer(64)
    a, b = tiny_model(vocab_size=64), tiny_model(vocab_size=64)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p))
    save_model(tmp_path / "a.safetensors", a, tok, dtype=torch.float32, extra={"steps": 1})
    save_model(tmp_path / "b.safetensors", b, tok, dtype=torch.float32, extra={"steps": 2})
    average_models([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "m.safetensors",
                   extra={"steps": 3})
    m, _ = load_model(tmp_path / "m.safetensors")
    sa, sb, sm = a.state_dict(), b.state_dict(), m.state_dict()
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)
    for k in sa:
        torch.testing.assert_close(sm[k], (sa[k] + sb[k]) / 2)
    assert model_extra(tmp_path / "m.safetensors") == {"steps": 3, "average_of": ["a.safetensors", "b.safetensors"]}
    other = tiny_model(vocab_size=32)
    save_model(tmp_path / "c.safetensors", other, placeholder_tokenizer(32))
    with pytest.raises(ModelError, match="cannot be averaged"):
        average_models([tmp_path / "a.safetensors", tmp_path / "c.safetensors"], tmp_path / "x.safetensors")


def whisper_model(vocab_size: int, **encoder_kw):
    from reallm_cli.model.checkpoint import build_model
    from reallm_cli.model.decoder import DecoderConfig
    from reallm_cli.model.whisper_config import WhisperEncoderConfig

    torch.manual_seed(0)
    enc = WhisperEncoderConfig(**{"d_model": 32, "n_heads": 4, "n_layers": 2, "ffn_dim": 64, **encoder_kw})
    dec = DecoderConfig(vocab_size=vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=64, window=64)
    return build_model(ReaLLMConfig(encoder=enc, decoder=dec, lead_in_ms=480))


def test_a_right_context_encoder_survives_the_model_file_and_its_right_context_can_be_changed(tmp_path):
    import numpy as np

    from reallm_cli.engine import Recognizer

    tok = placeholder_tokenizer(16)
    save_model(tmp_path / "m.safetensors", whisper_model(tok.vocab_size, right_context_ms=720, hop_ms=480), tok)
    loaded, _ = load_model(tmp_path / "m.safetensors")
    cfg = loaded.encoder.config
    assert (cfg.right_context_ms, cfg.hop_ms, loaded.encoder.wait_ms) == (720, 480, 960)
    wider, _ = load_model(tmp_path / "m.safetensors", right_context_ms=960)
    assert (wider.encoder.config.right_context_ms, wider.encoder.wait_ms) == (960, 1200)
    causal, _ = load_model(tmp_path / "m.safetensors", right_context_ms=0)
    assert (causal.encoder.config.right_context_ms, causal.encoder.config.hop_ms, causal.encoder.wait_ms) == (0, 240, 0)
    # the engine streams it: every chunk of a 3 s stream decoded, in blocks of any size
    rec = Recognizer(loaded, tok)
    s = rec.session()
    audio = np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1
    for i in range(0, 48000, 1234):
        s.push(audio[i:i + 1234])
    s.flush()
    assert s.chunks_done - rec.options.lead_in_chunks == 13  # 12.5 chunks of audio + the tail chunk


def with_config(src, dst, change) -> None:
    """A copy of the model file ``src`` whose stored config dict went through ``change`` (in place)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])
    change(config)
    save_file(load_file(str(src)), str(dst), metadata=dict(meta, config=json.dumps(config)))


@pytest.mark.parametrize("change,problem", [
    (lambda c: c.update(encoder_kind="transformer"), "unknown encoder kind 'transformer'"),
    (lambda c: c.pop("encoder_kind"), "missing key.*encoder_kind"),
    (lambda c: c["encoder"].update(right_context=720), "whisper encoder config: unknown key.*right_context"),
    (lambda c: c["encoder"].pop("n_heads"), "whisper encoder config: missing key.*n_heads"),
    (lambda c: c["encoder"].update(chunk_ms="240"), "chunk_ms must be int"),
    (lambda c: c["encoder"].update(chunk_ms=250), "chunk_ms 250 must be a positive multiple of 20 ms"),
    (lambda c: c["encoder"].update(right_context_ms=700), "right_context_ms 700 must be 0 or a multiple of chunk_ms"),
    (lambda c: c["encoder"].update(lookahead_ms=240), "layer-wise look-ahead"),
    (lambda c: c["decoder"].pop("d_model"), "decoder config: missing key.*d_model"),
    (lambda c: c.update(beam_size=4), "model config: unknown key.*beam_size"),
    (lambda c: c.update(lead_in_ms=-240.5), "lead_in_ms must be int"),
])
def test_a_model_file_with_a_config_that_does_not_fit_is_refused_in_one_line(tmp_path, change, problem):
    from reallm_cli.errors import ModelError

    tok = placeholder_tokenizer(16)
    good, bad = tmp_path / "m.safetensors", tmp_path / "bad.safetensors"
    save_model(good, whisper_model(tok.vocab_size, right_context_ms=720, hop_ms=480), tok)
    with_config(good, bad, change)
    with pytest.raises(ModelError, match=problem) as err:
        load_model(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_a_conformer_config_is_checked_too_and_its_right_context_cannot_be_set(tmp_path):
    from reallm_cli.errors import ModelError

    tok = placeholder_tokenizer(16)
    good, bad = tmp_path / "m.safetensors", tmp_path / "bad.safetensors"
    save_model(good, tiny_model(tok.vocab_size), tok)
    assert load_model(good)[0].config == tiny_model(tok.vocab_size).config
    with_config(good, bad, lambda c: c["encoder"].update(chunk_ms=260))
    with pytest.raises(ModelError, match="conformer encoder config: 260 is not a multiple of 40"):
        load_model(bad)
    with pytest.raises(ModelError, match="only for a Whisper-encoder model"):
        load_model(good, right_context_ms=480)


def test_a_right_context_that_does_not_fit_the_encoder_is_refused(tmp_path):
    from reallm_cli.errors import ModelError

    tok = placeholder_tokenizer(16)
    save_model(tmp_path / "m.safetensors", whisper_model(tok.vocab_size, right_context_ms=720, hop_ms=480), tok)
    with pytest.raises(ModelError, match="a right context of 250 ms does not fit .*multiple of chunk_ms 240"):
        load_model(tmp_path / "m.safetensors", right_context_ms=250)


def test_files_whose_configs_say_the_same_in_other_words_can_be_averaged(tmp_path):
    from reallm_cli.model.checkpoint import average_models

    tok = placeholder_tokenizer(16)
    new, old = tmp_path / "new.safetensors", tmp_path / "old.safetensors"
    save_model(new, whisper_model(tok.vocab_size, right_context_ms=720, hop_ms=480), tok)
    with_config(new, old, lambda c: c["encoder"].update(lookahead_ms=0))  # as the shipped file stores it
    average_models([old, new], tmp_path / "mean.safetensors")
    assert load_model(tmp_path / "mean.safetensors")[0].config == load_model(new)[0].config
