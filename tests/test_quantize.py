"""Reduced precision (bf16, fp16, int8): the encoder, the decoder layers and the output head are converted;
outputs stay close; ``auto`` picks bf16 where the CPU multiplies it natively, else fp16 where it can."""

import copy

import pytest
import torch
from torch import nn

from conftest import tiny_model
from reallm_cli.audio.features import whisper_log_mel
from reallm_cli.bench import synthetic_audio
from reallm_cli.engine import DecodeOptions, Recognizer
from reallm_cli.model.presets import placeholder_tokenizer
import reallm_cli.model.quantize as quantize
from reallm_cli.model.quantize import (PackedLinear, PrecisionError, apply_precision, fp16_supported, fuse_projections,
                                       int8_supported, onednn_packing, parameter_count, resolve_precision)

needs_int8 = pytest.mark.skipif(not int8_supported(), reason="this PyTorch build has no int8 engine")
needs_fp16 = pytest.mark.skipif(not fp16_supported(), reason="this PyTorch build has no FBGEMM")
DYNAMIC = [pytest.param("int8", torch.qint8, 0.05, marks=needs_int8), pytest.param("fp16", torch.float16, 1e-3, marks=needs_fp16)]


def _linears(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if type(m) is nn.Linear]


@pytest.mark.parametrize("precision, dtype, tolerance", DYNAMIC)
def test_int8_and_fp16_convert_the_encoder_decoder_layers_and_a_copy_of_the_output_head(precision, dtype, tolerance):
    model = tiny_model(64).eval()
    fused = fuse_projections(copy.deepcopy(model))  # what is converted: q, k and v are one layer
    n_enc, n_dec = len(_linears(fused.encoder)), len(_linears(fused.decoder.layers))
    projector = {n: m.weight.detach().clone() for n, m in model.projector.named_modules() if type(m) is nn.Linear}
    embedding = model.decoder.tok_embeddings.weight.detach().clone()
    x = torch.randn(1, 3, model.decoder.d_model)
    with torch.no_grad():
        logits = model.decoder.output(x)
    assert n_enc > 0 and n_dec > 0
    apply_precision(model, precision)
    assert _linears(model.encoder) == [] and _linears(model.decoder.layers) == []
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    for part, n in ((model.encoder, n_enc), (model.decoder.layers, n_dec)):
        layers = [m for m in part.modules() if isinstance(m, dynamic)]
        assert len(layers) == n and all(m._packed_params.dtype == dtype for m in layers)
    # the head is a converted copy: close to the fp32 logits; the token embedding stays fp32 and unchanged
    assert isinstance(model.decoder.output, dynamic) and model.decoder.output._packed_params.dtype == dtype
    with torch.no_grad():
        err = (model.decoder.output(x) - logits).abs().max().item()
    assert 0 < err < tolerance * logits.abs().max().item()
    assert type(model.decoder.tok_embeddings) is nn.Embedding
    assert torch.equal(model.decoder.tok_embeddings.weight, embedding)
    # the projector stays float32, packed where oneDNN is available
    kept = {n: m for n, m in model.projector.named_modules() if n in projector}
    assert all(torch.equal(m.weight, projector[n]) and m.weight.dtype == torch.float32 for n, m in kept.items())
    assert all(isinstance(m, PackedLinear) == onednn_packing() for m in kept.values())


needs_onednn = pytest.mark.skipif(not onednn_packing(), reason="this PyTorch build has no oneDNN")


@needs_onednn
def test_fp32_packs_the_same_weights_and_gives_the_same_outputs():
    model = tiny_model(64).eval()
    mel = whisper_log_mel(synthetic_audio(3.0, seed=1), floor="running")[None]  # (1, T, 80)
    lengths = torch.tensor([mel.shape[1]])
    x = torch.randn(1, 3, model.decoder.d_model)
    with torch.no_grad():
        ref, _ = model.encoder(mel, lengths)
        ref_logits = model.decoder.step(x, model.decoder.init_cache(1))
        fuse_projections(model)
        weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if type(m) is nn.Linear}
        apply_precision(model, "fp32")
        got, _ = model.encoder(mel, lengths)
        got_logits = model.decoder.step(x, model.decoder.init_cache(1))
    packed = {n: m for n, m in model.named_modules() if isinstance(m, PackedLinear)}
    assert set(packed) == set(weights) and all(type(m) is not nn.Linear for m in model.modules())
    for name, m in packed.items():
        assert m.dtype == torch.float32 and torch.equal(m.weight, weights[name]), name
    # the same float32 arithmetic, only summed in another order
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_logits, ref_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packing", [True, False])
def test_a_packed_linear_multiplies_as_f_linear_does_in_its_dtype(monkeypatch, dtype, packing):
    if packing and not onednn_packing():
        pytest.skip("this PyTorch build has no oneDNN")
    if packing and dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bfloat16 kernels for this CPU (AVX2 only): the fallback test covers it")
    monkeypatch.setattr(quantize, "onednn_packing", lambda: packing)
    torch.manual_seed(0)
    lin = nn.Linear(48, 40)
    layer = PackedLinear(lin.weight, lin.bias, dtype)
    assert (layer.packed is not None) == packing and layer.weight.shape == (40, 48)
    x = torch.randn(2, 5, 48)
    want = nn.functional.linear(x.to(dtype), lin.weight.to(dtype), lin.bias.to(dtype)).float()
    got = layer(x)
    assert got.dtype == torch.float32 and got.shape == (2, 5, 40)
    if dtype == torch.bfloat16:
        assert torch.equal(got, want)  # oneDNN's bfloat16 product is the one F.linear calls
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_without_onednn_fp32_leaves_the_model_alone(monkeypatch):
    monkeypatch.setattr(quantize, "onednn_packing", lambda: False)
    model = tiny_model(64).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_precision(model, "fp32")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


def test_unknown_precisions_are_refused():
    with pytest.raises(PrecisionError, match="auto, fp32, bf16, fp16, int8"):
        apply_precision(tiny_model(64).eval(), "fp8")


@pytest.mark.parametrize("precision, tolerance", [pytest.param("int8", 0.05, marks=needs_int8), ("bf16", 0.02),
                                                   pytest.param("fp16", 1e-3, marks=needs_fp16)])
def test_encoder_output_stays_close_to_fp32(precision, tolerance):
    model = tiny_model(64).eval()
    mel = whisper_log_mel(synthetic_audio(3.0, seed=1), floor="running")[None]  # (1, T, 80)
    lengths = torch.tensor([mel.shape[1]])
    with torch.no_grad():
        ref, _ = model.encoder(mel, lengths)
        apply_precision(model, precision)
        got, _ = model.encoder(mel, lengths)
    rel = float((got - ref).norm() / ref.norm())
    assert 0 < rel < tolerance, rel  # changed (it is not fp32), but by little


@pytest.mark.parametrize("precision", [pytest.param("int8", marks=needs_int8), pytest.param("fp16", marks=needs_fp16)])
def test_an_int8_or_fp16_session_streams_like_any_other(precision):
    tok = placeholder_tokenizer(64)
    model = apply_precision(tiny_model(tok.vocab_size).eval(), precision)
    rec = Recognizer(model, tok, DecodeOptions(max_tokens_per_chunk=2))
    s = rec.session()
    audio = synthetic_audio(2.0, seed=2)
    s.push(audio[:12345])
    s.push(audio[12345:])
    s.flush()
    assert s.chunks_done >= 8


@pytest.mark.parametrize("precision", [pytest.param("int8", marks=needs_int8), pytest.param("fp16", marks=needs_fp16)])
def test_parameter_count_still_sees_the_int8_and_fp16_weights(precision):
    model = tiny_model(64).eval()
    before = parameter_count(model)
    assert before == sum(p.numel() for p in model.parameters())
    apply_precision(model, precision)
    assert sum(p.numel() for p in model.parameters()) < before  # the packed weights left parameters()
    assert parameter_count(model) == before


def test_an_unknown_precision_is_refused_before_the_model_loads(monkeypatch):
    import reallm_cli.weights as weights

    def fail(*_a, **_k):
        raise AssertionError("the model was resolved before the precision was checked")

    monkeypatch.setattr(weights, "resolve_model", fail)
    with pytest.raises(PrecisionError, match="got 'fp8'"):
        Recognizer.load(None, precision="fp8")


def test_bf16_converts_the_same_layers_and_keeps_float32_between_them():
    model = tiny_model(64).eval()
    fused = fuse_projections(copy.deepcopy(model))  # what is converted: q, k and v are one layer
    n_enc, n_dec = len(_linears(fused.encoder)), len(_linears(fused.decoder.layers))
    embedding = model.decoder.tok_embeddings.weight.detach().clone()
    x = torch.randn(1, 3, model.decoder.d_model)
    with torch.no_grad():
        logits = model.decoder.output(x)
    apply_precision(model, "bf16")
    assert _linears(model.encoder) == [] and _linears(model.decoder.layers) == []
    for part, n in ((model.encoder, n_enc), (model.decoder.layers, n_dec)):
        layers = [m for m in part.modules() if isinstance(m, PackedLinear)]
        assert len(layers) == n and all(m.weight.dtype == torch.bfloat16 for m in layers)
    assert isinstance(model.decoder.output, PackedLinear)
    with torch.no_grad():
        got = model.decoder.output(x)
    assert got.dtype == torch.float32
    err = (got - logits).abs().max().item()
    assert 0 < err < 0.02 * logits.abs().max().item()
    assert torch.equal(model.decoder.tok_embeddings.weight, embedding)  # the tied embedding is untouched
    assert all(p.dtype == torch.float32 for p in model.parameters())  # norms, stem, projector: float32


def test_parameter_count_sees_the_bf16_weights():
    model = tiny_model(64).eval()
    before = parameter_count(model)
    apply_precision(model, "bf16")
    assert sum(p.numel() for p in model.parameters()) < before  # the bf16 weights are buffers
    assert parameter_count(model) == before


@pytest.mark.parametrize("fbgemm", [True, False])
@pytest.mark.parametrize("flags, native", [("fpu avx2 avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True),
                                           ("fpu avx2 avx512f avx512_vnni", False), ("fpu avx2 fma f16c", False),
                                           (None, False)])
def test_auto_is_bf16_where_the_cpu_multiplies_it_else_fp16_where_fbgemm_is(monkeypatch, tmp_path, flags, native,
                                                                            fbgemm):
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\n")
    monkeypatch.setattr(quantize, "CPUINFO", str(cpuinfo))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(quantize, "fp16_supported", lambda: fbgemm)
    assert resolve_precision("auto") == ("bf16" if native else "fp16" if fbgemm else "fp32")
    assert resolve_precision("int8") == "int8" and resolve_precision("fp32") == "fp32"


def test_auto_is_fp32_without_onednn(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu avx512_bf16\n")
    monkeypatch.setattr(quantize, "CPUINFO", str(cpuinfo))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    monkeypatch.setattr(quantize, "fp16_supported", lambda: False)
    assert resolve_precision("auto") == "fp32"


def test_fused_projections_compute_the_same_products():
    from reallm_cli.model.decoder import DecoderConfig, LlamaDecoder
    from reallm_cli.model.whisper_config import WhisperEncoderConfig
    from reallm_cli.model.whisper_encoder import WhisperStreamingEncoder

    torch.manual_seed(0)
    enc = WhisperStreamingEncoder(WhisperEncoderConfig(d_model=64, n_heads=2, n_layers=2, ffn_dim=128,
                                                       right_context_ms=240)).eval()
    for style in ("whisper", "llama"):  # llama: grouped k and v heads, no biases
        dec = LlamaDecoder(DecoderConfig(vocab_size=40, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2,
                                         ffn_hidden=96, window=16, style=style)).eval()
        both = nn.ModuleDict({"encoder": enc, "decoder": dec})
        mel = torch.randn(1, 150, 80)
        x = torch.randn(1, 20, 48)

        def run():
            with torch.no_grad():
                state = enc.init_state(1)
                frames = torch.cat([enc.step(mel[:, i:i + 24], state)[0] for i in range(0, 150, 24)]
                                   + [enc.flush(state)[0]], dim=1)
                cache = dec.init_cache(1)
                return frames, dec(x), torch.cat([dec.step(x[:, i:i + 3], cache) for i in range(0, 20, 3)], dim=1)

        want = run()
        fuse_projections(both)
        assert all(m.wq is None and m.wqkv is not None for m in (layer.attn for layer in dec.layers))
        assert all(b.attn.key is None and b.attn.key_value is not None for b in enc.blocks)
        for got, ref in zip(run(), want):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_a_weight_onednn_cannot_pack_falls_back_to_f_linear(monkeypatch):
    def refuse(_w):
        raise RuntimeError("no bfloat16 kernels on this CPU")

    monkeypatch.setattr(quantize, "_reorder_weight", refuse)
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    layer = PackedLinear(lin.weight, lin.bias, torch.bfloat16)
    assert layer.packed is None and layer.weight.dtype == torch.bfloat16
    x = torch.randn(3, 16)
    want = nn.functional.linear(x.bfloat16(), lin.weight.bfloat16(), lin.bias.bfloat16()).float()
    assert torch.equal(layer(x), want)


@needs_fp16
def test_fp16_refuses_where_pytorch_has_no_fbgemm(monkeypatch):
    monkeypatch.setattr(quantize, "fp16_supported", lambda: False)
    with pytest.raises(PrecisionError, match="FBGEMM"):
        apply_precision(tiny_model(64).eval(), "fp16")
