"""Reduced-precision inference: the linear layers are most of a chunk's compute on a laptop CPU.

``bf16``: each ``nn.Linear`` keeps a bfloat16 copy of its weight; its input is rounded to bfloat16 and
its output comes back as float32, so norms, softmax, attention and the convolutional stem stay float32.
bfloat16 keeps float32's range and 8 bits of mantissa: on a CPU with bfloat16 dot products
(AVX512-BF16 or AMX) oneDNN multiplies it at several times float32's speed, with float32
accumulation. Other CPUs have no such instructions, so bf16 is not expected to be faster there, and
``auto`` picks it only on CPUs that report them.

``int8``: PyTorch's dynamic quantization stores each ``nn.Linear`` weight as int8 (one scale per
output row) and quantizes the activations on the fly, per call; matrix products run in int8 with int32
accumulation (fbgemm on x86, qnnpack on ARM). Nothing is trained or calibrated, so any checkpoint can
run either way.

Converted, in both: the encoder's linear layers (compute-bound: 12 frames a chunk), the decoder's
transformer layers and its output head (memory-bound: one position a step, so reading 2x or 4x fewer
weight bytes is the win; a head over the 17,896-token vocabulary is 6.9 M weights, a third of a decoder step). The head
gets its own converted copy; the token embedding it is tied to stays fp32, as does the projector.
Measured figures are in the model card (weights/README.md).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from reallm_cli.errors import ReallmError
from reallm_cli.model.decoder import count_parameters

PRECISIONS = ("auto", "fp32", "bf16", "int8")
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
    """``auto`` becomes bf16 where the CPU multiplies bfloat16 natively, else fp32; others pass through."""
    if check_precision(precision) == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


class Bf16Linear(nn.Module):
    """A linear layer with a bfloat16 copy of ``weight`` (out, in) and ``bias``; float32 in, float32 out."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.detach().to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # as a 2-D product: a 3-D bfloat16 input is sent to bmm, which copies the whole transposed weight
        # on every call (17 ms for the output head, in a torch.profiler trace of torch 2.13)
        y = nn.functional.linear(x.reshape(-1, self.in_features).to(torch.bfloat16), self.weight, self.bias)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def linear_bf16(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` by a ``Bf16Linear`` (in place)."""
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            setattr(module, name, Bf16Linear(child.weight, child.bias))
        else:
            linear_bf16(child)
    return module


def int8_supported() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines or "qnnpack" in torch.backends.quantized.supported_engines


def quantize_linear_int8(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` by its dynamically quantized int8 twin (in place)."""
    if not int8_supported():
        raise PrecisionError("this PyTorch build has no int8 engine (fbgemm or qnnpack)")
    with warnings.catch_warnings():  # the eager API is deprecated in favour of torchao, not a dependency here
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # one scale per output row: a whole-matrix scale loses the small rows to rounding
        return quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


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
        # the converted output head is a copy of the token embedding (tied in the file), already counted
        if name.endswith("decoder.output"):
            continue
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            n += m.weight().numel() + (m.bias().numel() if m.bias() is not None else 0)
        elif isinstance(m, Bf16Linear):
            n += m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
    return n


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """``fp32``: leave the model as loaded; ``bf16`` and ``int8``: convert the encoder's linears, the
    decoder layers' and the decoder's output head (untied from the fp32 token embedding first); ``auto``:
    see ``resolve_precision``. The projector and the token embedding stay fp32."""
    precision = resolve_precision(precision)
    dec = model.decoder
    if precision == "int8":
        quantize_linear_int8(model.encoder)
        quantize_linear_int8(dec.layers)
        head = nn.Linear(dec.d_model, dec.cfg.vocab_size, bias=False)
        head.weight = nn.Parameter(dec.output.weight.detach().clone(), requires_grad=False)
        dec.output = quantize_linear_int8(nn.Sequential(head))[0]  # quantize_dynamic swaps children, not the root
    elif precision == "bf16":
        linear_bf16(model.encoder)
        linear_bf16(dec.layers)
        dec.output = Bf16Linear(dec.output.weight)  # its own copy: the tied token embedding stays fp32
    return model
