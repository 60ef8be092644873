"""SGD for the heads (:mod:`featcache.heads_step`): torch.optim.SGD's update (dampening 0), on every head at once.

Weight decay is per head (the grid) and on W and b only; the lr is a tensor (a captured CUDA graph reads the value
each epoch sets). Two ways, the same arithmetic up to float rounding (``tests/test_packed.py`` compares them):

- flat (the CPU's): the decay per family, then momentum, Nesterov and the step as four kernels over the one flat
  storage of every parameter;
- fused (CUDA's): torch's fused SGD kernel, one call per head position over every group's W_h and b_h (and one with
  no decay over gamma_h and beta_h). It reads and writes each weight once instead of about four times: at 10,240
  features x 1,000 classes the weights are 41 MB a head, and the update was most of a step's memory traffic. On
  the CPU the kernel is far slower than the flat one (about 0.5 ms a call), so it is used on CUDA only.

Both start the momentum at 0, so the first step leaves it at d_p, as torch's does.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .heads import HeadConfig

__all__ = ["fused_plan", "fused_sgd", "sgd_update"]

log = logging.getLogger(__name__)

Plan = list[tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], float, torch.Tensor]]


@functools.cache
def fused_sgd(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's fused SGD kernel (with the lr a tensor) updates the heads on ``device``: on CUDA, where it
    runs (on the CPU it is far slower than four flat kernels), once a trial call succeeds."""
    if device.type != "cuda" or not hasattr(torch, "_fused_sgd_"):
        return False
    try:
        p = [torch.zeros(4, device=device, dtype=dtype)]
        torch._fused_sgd_(p, [torch.ones_like(p[0])], [torch.zeros_like(p[0])], weight_decay=0.1, momentum=0.9,
                          lr=torch.ones((), device=device, dtype=dtype), dampening=0.0, nesterov=True, maximize=False,
                          is_first_step=False)  # fmt: skip
    except (RuntimeError, TypeError) as e:
        log.warning("torch's fused SGD kernel is not usable here (%s); using flat updates", e)
        return False
    return True


def fused_plan(views: dict[str, list[torch.Tensor]], families: Sequence, grid, bn: bool, lr_heads) -> Plan:
    """The fused kernel's calls: per head position h, (params, grads, momenta, weight decay, lr) over every group's
    W_h and b_h with wd_h, and (bn) over gamma_h and beta_h with none.

    Args:
        views: "param", "grad", "momentum": each family's tensors (W, b (, gamma, beta)), family after family.
        families: the trainer's families (K groups of H heads each).
        grid: each head position's (lr, weight decay).
        lr_heads: one 0-d lr tensor per head position.
    """
    plan: Plan = []
    H, per = len(grid), 4 if bn else 2
    for h, (_, wd) in enumerate(grid):
        for first, decay in ((0, wd), (2, 0.0)) if bn else ((0, wd),):
            lists = [[views[name][f * per + first + j][k * H + h] for f, fam in enumerate(families)
                      for k in range(fam.K) for j in (0, 1)] for name in ("param", "grad", "momentum")]  # fmt: skip
            plan.append((*lists, decay, lr_heads[h]))
    return plan


def sgd_update(plan: Plan | None, families: Sequence, param, grad, momentum, lr, config: HeadConfig) -> None:
    """One SGD step of every parameter: the fused ``plan`` when given, else flat over ``param`` (grad, momentum:
    the same layout; lr: a 0-d tensor, or one per parameter for a learning-rate grid)."""
    m, nesterov = config.momentum, config.nesterov
    if plan is not None:
        for params, grads, momenta, wd, lr_h in plan:
            torch._fused_sgd_(params, grads, momenta if m else [], weight_decay=wd, momentum=m, lr=lr_h,
                              dampening=0.0, nesterov=nesterov, maximize=False, is_first_step=False)  # fmt: skip
        return
    for fam in families:
        fam.gW.addcmul_(fam.wd3, fam.W)  # d_p = grad + wd * p, on W and b only (torch.optim.SGD's weight_decay)
        fam.gb.addcmul_(fam.wd2, fam.b)
    if m:
        momentum.mul_(m).add_(grad)
        update = grad.add_(momentum, alpha=m) if nesterov else momentum
    else:
        update = grad
    param.addcmul_(update, lr, value=-1)
