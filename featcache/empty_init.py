"""Networks built empty, for a checkpoint to fill: no random initialisation, no copy of the weights.

A torchvision ResNet50 spends 0.15-0.35 s initialising 25M random weights that a checkpoint then overwrites, and
loading copies the 100 MB again (0.2-0.3 s more on the 2-core CPU): per checkpoint, every extraction. Built on
the meta device instead (shapes only), the network takes the checkpoint's own tensors as its weights
(``load_state_dict(assign=True)``): 0.69 s to 0.21 s per ResNet50 checkpoint there, read and hash included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

__all__ = ["build_empty", "fill_left_out"]

T = TypeVar("T")


def build_empty(build: Callable[[], T], reraise: type[BaseException] | tuple = ()) -> T | None:
    """``build()`` on the meta device, or None where an empty network could differ from a built one.

    None when a module keeps state that no checkpoint holds (non-persistent buffers, computed in ``__init__``) or
    when building on the meta device fails (an ``__init__`` that reads values of tensors): build it the usual way.
    The returned object needs a ``module`` attribute (the network).

    Args:
        build: makes the network (a :class:`featcache.models.FeatureNet`).
        reraise: errors of ``build`` that are the caller's (a bad architecture name), raised as they are.
    """
    try:
        with torch.device("meta"):
            net = build()
    except reraise:
        raise
    except Exception:  # noqa: BLE001 - any other failure only means: build it the usual way
        return None
    if any(m._non_persistent_buffers_set for m in net.module.modules()):
        return None
    return net


def fill_left_out(net: nn.Module) -> None:
    """The tensors a checkpoint may leave out (BatchNorm's ``num_batches_tracked``, unused in eval mode), as zeros
    on the CPU, where an empty network filled with ``assign=True`` still has none."""
    for module in net.modules():
        for name, t in [*module.named_buffers(recurse=False), *module.named_parameters(recurse=False)]:
            if t.is_meta:
                zeros = torch.zeros(t.shape, dtype=t.dtype)
                if name in module._parameters:
                    module._parameters[name] = nn.Parameter(zeros, requires_grad=False)
                else:
                    module._buffers[name] = zeros
