"""Importing Whisper's encoder from CTranslate2 model.bin files.

The format tests write their own small model.bin files (every dtype, quantization scales, aliases, split
parts); the golden tests run the installed Whisper base and tiny.en on jfk.flac's log-mel and compare with
the original runtime's outputs in /work/shared/golden.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from reallm_cli.errors import ModelError
from reallm_cli.model.decoder import DecoderConfig, LlamaDecoder
from reallm_cli.model.whisper_config import WhisperEncoderConfig
from reallm_cli.model.whisper_encoder import WhisperStreamingEncoder
from reallm_cli.model.whisper_file import load_whisper_encoder
from reallm_cli.model.whisper_import import (
    KNOWN_SHA256,
    convert_installed_whisper,
    find_installed_whisper,
    import_whisper_decoder,
    import_whisper_encoder,
    read_ct2_variables,
)
from reallm_cli.weights import sha256_file

torch.set_num_threads(1)
GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
DTYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4, "bfloat16": 5}


def _str(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path: Path, variables: dict[str, tuple[str, np.ndarray]], aliases: dict[str, str] | None = None,
              spec: str = "WhisperSpec", version: int = 6) -> bytes:
    """A model.bin in CTranslate2's layout; variables are name -> (dtype name, array)."""
    out = [struct.pack("<I", version), _str(spec), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, (dtype, a) in variables.items():
        if dtype == "bfloat16":
            data = (np.asarray(a, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            data = np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
        out += [_str(name), struct.pack("<B", a.ndim), struct.pack("<" + "I" * a.ndim, *a.shape),
                struct.pack("<BI", DTYPE_IDS[dtype], len(data)), data]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_str(alias), _str(target)]
    blob = b"".join(out)
    path.write_bytes(blob)
    return blob


def test_parser_reads_every_dtype_scales_aliases_and_split_parts(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    scale = (127 / np.abs(w).max(axis=1)).astype(np.float32)
    q8 = np.round(w * scale[:, None]).astype(np.int8)
    q16 = np.round(w * 1000).astype(np.int16)
    bf = np.array([1.5, -2.25, 3.0], np.float32)  # exactly representable in bfloat16
    blob = write_ct2(tmp_path / "m.bin", {
        "encoder/a": ("float32", w),
        "encoder/b": ("float16", w.astype(np.float16)),
        "encoder/c": ("bfloat16", bf),
        "encoder/q/weight": ("int8", q8), "encoder/q/weight_scale": ("float32", scale),
        "encoder/r/weight": ("int16", q16), "encoder/r/weight_scale": ("float32", np.array(1000, np.float32)),
        "encoder/num_heads": ("int16", np.array(2, np.int16)),
        "decoder/skipped": ("float32", rng.standard_normal((50, 7)).astype(np.float32)),
    }, aliases={"encoder/alias": "encoder/a"})
    cut = len(blob) // 3  # split anywhere, even inside a header
    (tmp_path / "p1").write_bytes(blob[:cut])
    (tmp_path / "p2").write_bytes(blob[cut:])
    spec, revision, v = read_ct2_variables([tmp_path / "p1", tmp_path / "p2"], prefix="encoder/")
    assert (spec, revision) == ("WhisperSpec", 3)
    assert "decoder/skipped" not in v
    np.testing.assert_array_equal(v["encoder/a"], w)
    np.testing.assert_array_equal(v["encoder/alias"], w)
    np.testing.assert_array_equal(v["encoder/b"], w.astype(np.float16))
    np.testing.assert_array_equal(v["encoder/c"], bf)
    assert int(v["encoder/num_heads"]) == 2
    from reallm_cli.model.whisper_import import _dequantize

    assert np.abs(_dequantize(v, "encoder/q/weight").numpy() - w).max() < 0.5 / scale.min()
    assert np.abs(_dequantize(v, "encoder/r/weight").numpy() - w).max() <= 0.0005 + 1e-7
    assert sha256_file(tmp_path / "p1", tmp_path / "p2") == sha256_file(tmp_path / "m.bin")


def test_parser_rejects_bad_files(tmp_path):
    ok = write_ct2(tmp_path / "ok.bin", {"encoder/a": ("float32", np.ones((2, 2), np.float32))})
    (tmp_path / "short.bin").write_bytes(ok[:-9])
    with pytest.raises(ModelError, match="truncated"):
        read_ct2_variables([tmp_path / "short.bin"])
    (tmp_path / "long.bin").write_bytes(ok + b"\0\0")
    with pytest.raises(ModelError, match="trailing"):
        read_ct2_variables([tmp_path / "long.bin"])
    write_ct2(tmp_path / "v9.bin", {}, version=9)
    with pytest.raises(ModelError, match="binary version 9"):
        read_ct2_variables([tmp_path / "v9.bin"])
    with pytest.raises(ModelError, match="not found"):
        read_ct2_variables([tmp_path / "missing.bin"])
    write_ct2(tmp_path / "t5.bin", {"encoder/a": ("float32", np.ones(2, np.float32))}, spec="TransformerSpec")
    with pytest.raises(ModelError, match="not a Whisper"):
        import_whisper_encoder([tmp_path / "t5.bin"])
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        import_whisper_encoder([tmp_path / "ok.bin"], expected_sha256="0" * 64)
    with pytest.raises(ModelError, match="unknown Whisper model"):
        find_installed_whisper("large-v9")


def ct2_variables_of(model: WhisperStreamingEncoder, key_bias: np.ndarray, dtype: str = "float32") -> dict:
    """Our encoder's weights laid out as CTranslate2's WhisperSpec names them (qkv fused, k with a bias)."""
    sd = {k: t.numpy() for k, t in model.state_dict().items()}
    cfg = model.config
    v = {
        "encoder/conv1/weight": sd["conv1.weight"], "encoder/conv1/bias": sd["conv1.bias"],
        "encoder/conv2/weight": sd["conv2.weight"], "encoder/conv2/bias": sd["conv2.bias"],
        "encoder/position_encodings/encodings": sd["positional_embedding"],
        "encoder/layer_norm/gamma": sd["ln_post.weight"], "encoder/layer_norm/beta": sd["ln_post.bias"],
    }
    for i in range(cfg.n_layers):
        p, s = f"encoder/layer_{i}/", f"blocks.{i}."
        v[p + "self_attention/linear_0/weight"] = np.concatenate(
            [sd[s + "attn.query.weight"], sd[s + "attn.key.weight"], sd[s + "attn.value.weight"]])
        v[p + "self_attention/linear_0/bias"] = np.concatenate(
            [sd[s + "attn.query.bias"], key_bias, sd[s + "attn.value.bias"]])
        for ours, theirs in [("attn_ln.weight", "self_attention/layer_norm/gamma"),
                             ("attn_ln.bias", "self_attention/layer_norm/beta"),
                             ("attn.out.weight", "self_attention/linear_1/weight"),
                             ("attn.out.bias", "self_attention/linear_1/bias"),
                             ("mlp_ln.weight", "ffn/layer_norm/gamma"), ("mlp_ln.bias", "ffn/layer_norm/beta"),
                             ("mlp.0.weight", "ffn/linear_0/weight"), ("mlp.0.bias", "ffn/linear_0/bias"),
                             ("mlp.2.weight", "ffn/linear_1/weight"), ("mlp.2.bias", "ffn/linear_1/bias")]:
            v[p + theirs] = sd[s + ours]
    out = {k: (dtype, a) for k, a in v.items()}
    out["encoder/num_heads"] = ("int16", np.array(cfg.n_heads, np.int16))
    out["decoder/embeddings/weight"] = ("float32", np.zeros((10, cfg.d_model), np.float32))
    return out


def test_import_maps_every_weight_and_reproduces_the_model(tmp_path):
    torch.manual_seed(0)
    cfg = WhisperEncoderConfig(d_model=32, n_heads=4, n_layers=2, ffn_dim=80, n_ctx=300, window_ms=4800,
                               overlap_ms=960)
    model = WhisperStreamingEncoder(cfg).eval()
    with torch.no_grad():  # random, non-trivial norms and positions so that a swapped tensor shows
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(torch.randn_like(p) * 0.3)
        model.positional_embedding.normal_()
    key_bias = np.random.default_rng(1).standard_normal(32).astype(np.float32)
    write_ct2(tmp_path / "model.bin", ct2_variables_of(model, key_bias))
    got_cfg, sd = import_whisper_encoder([tmp_path / "model.bin"], sha256_file(tmp_path / "model.bin"))
    assert (got_cfg.d_model, got_cfg.n_heads, got_cfg.n_layers, got_cfg.ffn_dim, got_cfg.n_ctx) == (32, 4, 2, 80, 300)
    assert set(sd) == set(model.state_dict())
    imported = WhisperStreamingEncoder(got_cfg).eval()
    imported.load_state_dict(sd)
    mel = torch.randn(1, 200, 80)
    with torch.no_grad():
        a, _ = model(mel, torch.tensor([200]), full_attention=True)
        b, _ = imported(mel, torch.tensor([200]), full_attention=True)
    # The dropped key bias is exact: it shifts every logit of a query by the same amount.
    assert (a - b).abs().max().item() < 1e-5


def test_import_dequantizes_int8_weights(tmp_path):
    torch.manual_seed(0)
    model = WhisperStreamingEncoder(WhisperEncoderConfig(d_model=32, n_heads=4, n_layers=1, ffn_dim=64)).eval()
    v = ct2_variables_of(model, np.zeros(32, np.float32))
    for name in [n for n in v if n.endswith("linear_0/weight") or n.endswith("linear_1/weight")]:
        w = v[name][1]
        scale = (127 / np.abs(w).max(axis=1)).astype(np.float32)
        v[name] = ("int8", np.round(w * scale[:, None]).astype(np.int8))
        v[name + "_scale"] = ("float32", scale)
    write_ct2(tmp_path / "model.bin", v)
    _, sd = import_whisper_encoder([tmp_path / "model.bin"])
    ref = model.state_dict()
    for key in ("blocks.0.attn.query.weight", "blocks.0.mlp.0.weight", "blocks.0.attn.out.weight"):
        err = (sd[key] - ref[key]).abs().max().item()
        assert 0 < err < ref[key].abs().max().item() / 127  # quantized, then undone to within one step


def _golden(name: str):
    if not GOLDEN.is_dir():
        pytest.skip(f"golden outputs not found at {GOLDEN}")
    try:
        paths = find_installed_whisper(name)
    except ModelError as exc:
        pytest.skip(f"Whisper {name} is not installed: {exc}")
    mel = torch.from_numpy(np.load(GOLDEN / "jfk_whisper_logmel.npy")).T[None].float()  # (1, 1100, 80)
    ref = torch.from_numpy(np.load(GOLDEN / f"jfk_whisper-{name}_encoder.npy").astype(np.float32))
    info = json.loads((GOLDEN / "info.json").read_text())
    return paths, mel, ref, info[f"whisper-{name}"]["model.bin sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["base", "tiny.en"])
def test_imported_encoder_reproduces_the_original(name):
    paths, mel, ref, sha = _golden(name)
    assert KNOWN_SHA256[name] == sha
    cfg, sd = import_whisper_encoder(paths, expected_sha256=sha)
    model = WhisperStreamingEncoder(cfg).eval()
    model.load_state_dict(sd)
    with torch.no_grad():
        out, lengths = model(mel, torch.tensor([1100]), full_attention=True)
    assert out.shape == ref.shape and lengths.item() == 550
    diff = (out - ref).abs()
    # The reference is stored in fp16: allow a few fp16 steps at the largest magnitudes.
    cos = torch.nn.functional.cosine_similarity(out.double().flatten(), ref.double().flatten(), dim=0).item()
    print(f"whisper-{name}: max abs diff {diff.max().item():.2e}, mean {diff.mean().item():.2e}, "
          f"max |ref| {ref.abs().max().item():.1f}, cosine {cos:.7f}")
    assert diff.max().item() < 2e-2
    assert diff.mean().item() < 1e-3
    assert cos > 0.99999
    # The streaming schedule (here chunk-causal) differs (it may not look ahead) but stays close on the whole.
    with torch.no_grad():
        causal, _ = model(mel, torch.tensor([1100]))
    cos_causal = torch.nn.functional.cosine_similarity(causal.flatten(), ref.flatten(), dim=0).item()
    assert 0.5 < cos_causal < 0.99999


@pytest.mark.slow
def test_convert_installed_writes_a_loadable_file(tmp_path):
    paths, mel, ref, _ = _golden("tiny.en")
    out = tmp_path / "tiny.safetensors"
    cfg = convert_installed_whisper("tiny.en", out, dtype=torch.float16)
    assert cfg.source == "whisper-tiny.en"
    model = load_whisper_encoder(out, chunk_ms=480, right_context_ms=480)
    assert model.chunk_ms == 480 and model.wait_ms == 480
    with torch.no_grad():
        y, _ = model(mel, torch.tensor([1100]), full_attention=True)
    assert (y - ref).abs().max().item() < 5e-2


@pytest.mark.slow
def test_pretrained_streaming_equals_parallel_in_float64():
    """With real weights the residual stream reaches ~500, so fp32 forward/step differ by ~1e-4 from rounding
    alone; in float64 any difference would be a logic error (short windows: several restarts in 11 s)."""
    paths, mel, _, _ = _golden("tiny.en")
    cfg, sd = import_whisper_encoder(paths)
    cfg = dataclasses.replace(cfg, right_context_ms=720, hop_ms=480, window_ms=4800, overlap_ms=960)
    model = WhisperStreamingEncoder(cfg).double().eval()
    model.load_state_dict({k: v.double() for k, v in sd.items()})
    mel = mel.double()
    state, outs = model.init_state(1), []
    for i in range(0, mel.shape[1], 31):
        out, state = model.step(mel[:, i:i + 31], state)
        outs.append(out)
    outs.append(model.flush(state)[0])
    with torch.no_grad():
        ref, _ = model(mel, torch.tensor([mel.shape[1]]))
    assert (torch.cat(outs, dim=1) - ref).abs().max().item() < 1e-9


def ct2_decoder_variables(dec: LlamaDecoder, key_bias: np.ndarray) -> dict:
    """A whisper-style decoder's weights under CTranslate2's WhisperSpec decoder names (+ cross-attention)."""
    sd = {k: t.numpy() for k, t in dec.state_dict().items()}
    d = dec.cfg.d_model
    v = {"decoder/embeddings/weight": sd["tok_embeddings.weight"], "decoder/layer_norm/gamma": sd["norm.weight"],
         "decoder/layer_norm/beta": sd["norm.bias"],
         "decoder/position_encodings/encodings": np.zeros((448, d), np.float32)}
    for i in range(dec.cfg.n_layers):
        p, s = f"decoder/layer_{i}/", f"layers.{i}."
        v[p + "self_attention/linear_0/weight"] = np.concatenate(
            [sd[s + "attn.wq.weight"], sd[s + "attn.wk.weight"], sd[s + "attn.wv.weight"]])
        v[p + "self_attention/linear_0/bias"] = np.concatenate([sd[s + "attn.wq.bias"], key_bias, sd[s + "attn.wv.bias"]])
        v[p + "attention/linear_0/weight"] = np.ones((d, d), np.float32)  # cross-attention: not imported
        for ours, theirs in [("attn_norm.weight", "self_attention/layer_norm/gamma"),
                             ("attn_norm.bias", "self_attention/layer_norm/beta"),
                             ("attn.wo.weight", "self_attention/linear_1/weight"),
                             ("attn.wo.bias", "self_attention/linear_1/bias"),
                             ("ffn_norm.weight", "ffn/layer_norm/gamma"), ("ffn_norm.bias", "ffn/layer_norm/beta"),
                             ("ffn.fc1.weight", "ffn/linear_0/weight"), ("ffn.fc1.bias", "ffn/linear_0/bias"),
                             ("ffn.fc2.weight", "ffn/linear_1/weight"), ("ffn.fc2.bias", "ffn/linear_1/bias")]:
            v[p + theirs] = sd[s + ours]
    out = {k: ("float32", a) for k, a in v.items()}
    out["decoder/num_heads"] = ("int16", np.array(dec.cfg.n_heads, np.int16))
    return out


def test_decoder_import_maps_every_weight_and_cuts_the_vocabulary(tmp_path):
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, ffn_hidden=64, style="whisper")
    whisper = LlamaDecoder(cfg).eval()
    with torch.no_grad():  # non-trivial norms, so that a swapped tensor shows
        for name, p in whisper.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    key_bias = np.random.default_rng(1).standard_normal(32).astype(np.float32)
    write_ct2(tmp_path / "model.bin", ct2_decoder_variables(whisper, key_bias))
    keep = [-1, 3, 7, 11, 40]
    got_cfg, sd = import_whisper_decoder([tmp_path / "model.bin"], keep, blank_from=49, window=64, dropout=0.1)
    assert (got_cfg.vocab_size, got_cfg.d_model, got_cfg.n_layers, got_cfg.n_heads, got_cfg.ffn_hidden,
            got_cfg.style, got_cfg.window, got_cfg.dropout) == (5, 32, 2, 4, 64, "whisper", 64, 0.1)
    ours = LlamaDecoder(got_cfg).eval()
    ours.load_state_dict(sd)  # strict: every parameter is there
    emb = whisper.tok_embeddings.weight.detach()
    torch.testing.assert_close(ours.tok_embeddings.weight.detach(), emb[[49, 3, 7, 11, 40]])
    assert ours.output.weight is ours.tok_embeddings.weight
    x = torch.randn(1, 9, 32)
    with torch.no_grad():  # same layers (the dropped key bias is exact); the head is cut to the kept rows
        torch.testing.assert_close(ours(x), whisper(x)[..., [49, 3, 7, 11, 40]], atol=1e-5, rtol=0)
    with pytest.raises(ModelError, match="outside Whisper's vocabulary"):
        import_whisper_decoder([tmp_path / "model.bin"], [-1, 3, 50], blank_from=49)
