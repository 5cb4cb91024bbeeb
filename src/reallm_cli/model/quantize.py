"""Inference precision: the linear layers are most of a chunk's compute on a laptop CPU.

``fp32``: each ``nn.Linear`` keeps its float32 weight, pre-packed for oneDNN (``PackedLinear``): the
same arithmetic, several times faster for the few rows of a streaming step than ``F.linear``.

``bf16``: each ``nn.Linear`` keeps a bfloat16 copy of its weight; its input is rounded to bfloat16 and
its output comes back as float32, so norms, softmax, attention and the convolutional stem stay float32.
bfloat16 keeps float32's range and 8 bits of mantissa: on a CPU with bfloat16 dot products
(AVX512-BF16 or AMX) oneDNN multiplies it at several times float32's speed, with float32
accumulation. Other CPUs have no such instructions, and oneDNN no bfloat16 kernels for them (bf16
then falls back to ``F.linear``, slower than fp32), so ``auto`` picks it only on CPUs that report them.

``fp16``: each ``nn.Linear`` keeps a float16 copy of its weight, multiplied by FBGEMM's fp16 kernel
(part of PyTorch's x86 builds, reached through its dynamic quantization API): activations stay float32,
the weight is widened to float32 as it is read (F16C), sums are float32. Half float32's weight
traffic at float16's 11-bit mantissa (a product moves by ~2e-4, relative), so on x86 CPUs without
bfloat16 instructions (AVX2 laptops) ``auto`` picks it.

``int8``: PyTorch's dynamic quantization stores each ``nn.Linear`` weight as int8 (one scale per
output row) and quantizes the activations on the fly, per call; matrix products run in int8 with int32
accumulation (fbgemm on x86, qnnpack on ARM). Nothing is trained or calibrated, so any checkpoint can
run either way.

Converted, in all four: the encoder's linear layers (compute-bound: 12 frames a chunk), the decoder's
transformer layers and its output head (memory-bound: one position a step, so reading 2x or 4x fewer
weight bytes is the win; a head over a 17,896-token vocabulary is 6.9 M weights, a third of a decoder
step). The head gets its own converted copy; the token embedding it is tied to stays fp32, and the
projector is packed in fp32.
Measured figures are in the model card (weights/README.md).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from reallm_cli.errors import ReallmError
from reallm_cli.model.decoder import count_parameters
from reallm_cli.model.no_init import no_random_init

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (Linux reports it in /proc/cpuinfo; elsewhere: no) and
    torch has oneDNN to do it with."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open(CPUINFO) as f:
            for line in f:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in _BF16_CPU_FLAGS)
    except OSError:
        pass
    return False


def resolve_precision(precision: str) -> str:
    """``auto`` becomes bf16 where the CPU multiplies bfloat16 natively, else fp16 where PyTorch has
    FBGEMM (x86), else fp32; others pass through."""
    if check_precision(precision) == "auto":
        if native_bf16():
            return "bf16"
        return "fp16" if fp16_supported() else "fp32"
    return precision


def onednn_packing() -> bool:
    """Whether this torch build can keep a weight in oneDNN's blocked layout (its x86 CPU builds can)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _reorder_weight(w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(w)


def _pack(w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``w`` in oneDNN's layout, tried once on a row of zeros; None where this CPU or build cannot
    (oneDNN without bfloat16 kernels, say), so that the layer falls back to ``F.linear``."""
    try:
        packed = _reorder_weight(w)
        torch.ops.mkldnn._linear_pointwise(w.new_zeros(1, w.shape[1]), packed, bias, "none", [], "")
    except RuntimeError:
        return None
    return packed


class PackedLinear(nn.Module):
    """An inference-only linear layer with its weight (out, in) and bias in ``dtype`` (float32 or
    bfloat16), float32 in and float32 out.

    Where oneDNN is available the weight is kept only pre-packed, in oneDNN's blocked layout (what
    PyTorch's own compiler does for CPU inference). A plain ``F.linear`` re-reads the weight in its
    stored layout on every call, which for the one to twelve rows of a streaming step costs more than
    the arithmetic: measured here on 2 cores, a step of a 17,896-token output head (the default
    model's until 2026-12-03) took 3.8 ms in float32 and 0.65 ms in bfloat16 through ``F.linear``,
    0.75 and 0.15 ms packed. In bfloat16 the
    packed product is bit-identical; in float32 only the order of the additions differs. Without
    oneDNN the dense weight is kept and multiplied with ``F.linear``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        w = weight.detach().to(dtype)
        self.dtype = dtype  # read on every call: kept, not asked of the packed tensor
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))
        # the packed weight is an opaque oneDNN tensor (not a buffer: nothing saves or moves it)
        self.packed = _pack(w, self.bias) if onednn_packing() else None
        self._dense = None if self.packed is not None else w

    @property
    def weight(self) -> torch.Tensor:
        """The weight as an ordinary (out, in) tensor (a copy when it is kept packed)."""
        return self.packed.to_dense() if self.packed is not None else self._dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # as a 2-D product: a 3-D bfloat16 input is sent to bmm, which copies the whole transposed weight
        # on every call (17 ms for the output head, in a torch.profiler trace of torch 2.13)
        x2 = x.reshape(-1, self.in_features).to(self.dtype)
        if self.packed is not None:
            y = torch.ops.mkldnn._linear_pointwise(x2, self.packed, self.bias, "none", [], "")
        else:
            y = nn.functional.linear(x2, self._dense, self.bias)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"dtype={self.dtype}, packed={self.packed is not None}")


def pack_linears(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` by a ``PackedLinear`` in ``dtype`` (in place)."""
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            setattr(module, name, PackedLinear(child.weight, child.bias, dtype))
        else:
            pack_linears(child, dtype)
    return module


def int8_supported() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines or "qnnpack" in torch.backends.quantized.supported_engines


def _swap_linears(module: nn.Module, qconfig_name: str) -> nn.Module:
    """Every ``nn.Linear`` inside ``module`` replaced in place by PyTorch's dynamic twin for the qconfig
    named (``torch.ao.quantization``)."""
    with warnings.catch_warnings():  # the eager API is deprecated in favour of torchao, not a dependency here
        warnings.simplefilter("ignore")
        return _swap_linears_as_is(module, qconfig_name)


def _swap_linears_as_is(module: nn.Module, qconfig_name: str) -> nn.Module:
    """``_swap_linears`` leaving the warning filters alone (they are process-wide: threads must not each
    set and restore them)."""
    import torch.ao.quantization as tq

    return tq.quantize_dynamic(module, {nn.Linear: getattr(tq, qconfig_name)}, inplace=True)


def _dynamic_qconfig(precision: str) -> str:
    """The ``torch.ao.quantization`` qconfig for int8 or fp16 weights; refuses a build that cannot run it."""
    if precision == "int8":
        if not int8_supported():
            raise PrecisionError("this PyTorch build has no int8 engine (fbgemm or qnnpack)")
        return "per_channel_dynamic_qconfig"  # one scale per output row: a whole-matrix one loses small rows
    if not fp16_supported():
        raise PrecisionError("this PyTorch build has no FBGEMM for fp16 weights (x86 builds have it)")
    return "float16_dynamic_qconfig"


def quantize_linear_int8(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` by its dynamically quantized int8 twin (in place)."""
    return _swap_linears(module, _dynamic_qconfig("int8"))


def fp16_supported() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def convert_linear_fp16(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` by its float16-weight twin (FBGEMM), in place."""
    return _swap_linears(module, _dynamic_qconfig("fp16"))


def _head_copy(weight: torch.Tensor) -> nn.Sequential:
    """A bias-free linear layer holding a copy of ``weight`` (out, in), in a Sequential: quantize_dynamic
    swaps children, not the module it is given."""
    with no_random_init():  # the weight is replaced below
        head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    return nn.Sequential(head)


class PrecisionError(ReallmError, ValueError):
    """A precision this build cannot run."""


def check_precision(precision: str) -> str:
    """Refuse an unknown precision before anything slow (loading a model) happens."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def parameter_count(model: nn.Module) -> int:
    """Weights in the model, the converted linear layers included (``parameters()`` no longer sees them)."""
    n = count_parameters(model)
    for name, m in model.named_modules():
        n -= getattr(m, "fused_padding", 0)  # see fuse_projections
        # the converted output head is a copy of the token embedding (tied in the file), already counted
        if name.endswith("decoder.output"):
            continue
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            n += m.weight().numel() + (m.bias().numel() if m.bias() is not None else 0)
        elif isinstance(m, PackedLinear):
            n += m.out_features * m.in_features + (m.bias.numel() if m.bias is not None else 0)
    return n


def _concat_linears(parts: list[nn.Linear]) -> tuple[nn.Linear, int]:
    """One linear layer computing all of ``parts`` (same input) side by side, and how many zeros stand in
    for the biases some parts lack (Whisper's keys have none): those are not weights of the model."""
    has_bias = [m.bias is not None for m in parts]
    w = parts[0].weight
    with no_random_init():  # every weight is copied in below
        fused = nn.Linear(w.shape[1], sum(m.out_features for m in parts), bias=any(has_bias), device=w.device)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([m.weight for m in parts]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([m.bias if m.bias is not None else w.new_zeros(m.out_features)
                                        for m in parts]))
    return fused, sum(m.out_features for m, b in zip(parts, has_bias) if fused.bias is not None and not b)


def fuse_projections(model: nn.Module) -> nn.Module:
    """One product instead of several where they share an input (a streaming step is a few rows, where a
    call's fixed cost matters): the decoder layers' q, k and v, the Whisper encoder's k and v (its top
    layer has fewer queries than keys: none for the right context). The separate layers are dropped. Inference only."""
    from reallm_cli.model.decoder import Attention
    from reallm_cli.model.whisper_blocks import MultiHeadAttention

    for m in list(model.modules()):  # a list: the loop replaces submodules
        if isinstance(m, Attention) and m.wqkv is None:
            m.wqkv, m.fused_padding = _concat_linears([m.wq, m.wk, m.wv])
            m.wq = m.wk = m.wv = None
        elif isinstance(m, MultiHeadAttention) and m.key_value is None:
            m.key_value, m.fused_padding = _concat_linears([m.key, m.value])
            m.key = m.value = None
    return model


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """Make a loaded model ready for inference in ``precision`` (``auto``: see ``resolve_precision``).

    Projections that share an input are fused first (``fuse_projections``). The encoder's linear layers,
    the decoder layers' and the decoder's output head (untied from the token embedding first, which stays
    float32) become ``PackedLinear`` in float32 (``fp32``) or bfloat16 (``bf16``), or PyTorch's dynamic
    int8 or float16-weight layers (``int8``, ``fp16``). The projector is packed in float32 in every
    precision. Without oneDNN, ``fp32`` leaves the model as loaded, unfused."""
    precision = resolve_precision(precision)
    dec = model.decoder
    packing = onednn_packing()
    if precision != "fp32" or packing:
        fuse_projections(model)
    if packing:
        pack_linears(model.projector, torch.float32)
    if precision in ("int8", "fp16"):
        qconfig = _dynamic_qconfig(precision)
        head = _head_copy(dec.output.weight)
        # Packing the weights takes most of the load time; the three parts are packed side by side on the
        # cores this process may use, whatever --threads says for the stream (the packing releases Python's
        # lock): 0.36 s instead of 0.72 s for the default model in fp16 on 2 cores.
        with warnings.catch_warnings(), ThreadPoolExecutor(min(3, _usable_cores())) as pool:
            warnings.simplefilter("ignore")
            list(pool.map(lambda part: _swap_linears_as_is(part, qconfig), (model.encoder, dec.layers, head)))
        dec.output = head[0]
    elif precision == "bf16" or packing:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        pack_linears(model.encoder, dtype)
        pack_linears(dec.layers, dtype)
        dec.output = PackedLinear(dec.output.weight, None, dtype)  # its own copy: the tied embedding stays
    return model
