"""Int8 inference: the linear layers are most of a chunk's compute on a laptop CPU.

PyTorch's dynamic quantization stores each ``nn.Linear`` weight as int8 (one scale per output row) and
quantizes the activations on the fly, per call; matrix products run in int8 with int32 accumulation
(fbgemm on x86, qnnpack on ARM). Nothing is trained or calibrated, so any checkpoint can run this way.

Converted: the encoder's linear layers (compute-bound: 12 frames a chunk), the decoder's transformer
layers and its output head (memory-bound: one position a step, so reading 4x fewer weight bytes is the
win; a head over Whisper's 13k-token vocabulary is 5 M weights, a third of a decoder step). The head
gets its own int8 copy; the token embedding it is tied to stays fp32, as does the projector.
Measured figures are in the model card (weights/README.md).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from reallm_cli.errors import ReallmError
from reallm_cli.model.decoder import count_parameters

PRECISIONS = ("fp32", "int8")


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
    """Weights in the model, the int8-packed linear layers included (``parameters()`` no longer sees them)."""
    n = count_parameters(model)
    for name, m in model.named_modules():
        # the int8 output head is a copy of the token embedding (tied in the file), already counted
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear) and not name.endswith("decoder.output"):
            n += m.weight().numel() + (m.bias().numel() if m.bias() is not None else 0)
    return n


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """``fp32``: leave the model as loaded; ``int8``: quantize the encoder's linears, the decoder layers'
    and the decoder's output head (untied from the fp32 token embedding first)."""
    if check_precision(precision) == "int8":
        quantize_linear_int8(model.encoder)
        quantize_linear_int8(model.decoder.layers)
        dec = model.decoder
        head = nn.Linear(dec.d_model, dec.cfg.vocab_size, bias=False)
        head.weight = nn.Parameter(dec.output.weight.detach().clone(), requires_grad=False)
        dec.output = quantize_linear_int8(nn.Sequential(head))[0]  # quantize_dynamic swaps children, not the root
    return model
