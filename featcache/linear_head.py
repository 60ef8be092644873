"""A fitted head as it scores: a normalisation, then one Linear. The arithmetic the solvers score with, shared with
saved heads (:mod:`featcache.saved_head`), so that a saved head scores bit for bit what its probe scored.

One normalisation per way a head is fitted:

- ``batchnorm`` (SGD's ``bn-linear``): xhat = (x - running_mean) * rsqrt(running_var + eps), in place on the batch,
  then logits = xhat @ W.T + b, BatchNorm's affine folded into W and b (:class:`featcache.heads.MultiHeadProbe`);
- ``none`` (SGD's ``linear``): logits = x @ W.T + b;
- ``standardise`` (L-BFGS): z = (x - mean) * inv_std with the fit rows' statistics, then logits = addmm(b, z, W.T)
  (:class:`featcache.logreg.LogRegPath`).

Rows are read in the blocks the solver scores in (``eval_rows``), features cast to float32 as the solver casts
them: the rounding of a matrix product can depend on its shape, so the same blocks give the same bits.

Per-model blocks, as the research code's ``cat_validate_network``: the head of features concatenated from several
models, using one model's block only. The research code slices the *normalised* features (BatchNorm's output,
affine included): the other blocks add nothing, and the bias keeps the Linear's own bias plus this block's share of
BatchNorm's shift, b + W[:, a:b] @ beta[a:b] (:meth:`LinearHead.block_bias`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace

import torch

from .feed_batches import BatchBuffer, eval_batches
from .head_layout import NORMS
from .rows import Features, StandardisedBlocks

__all__ = ["BN_EPS", "NORMS", "LBFGS_EVAL_ROWS", "SGD_EVAL_ROWS", "LinearHead", "Scores", "bn_normalise_", "count_hits",
           "fold", "split_heads"]  # fmt: skip

BN_EPS = 1e-5  # torch.nn.BatchNorm1d's default
SGD_EVAL_ROWS = 1024  # rows per block the SGD heads score in (featcache.heads)
LBFGS_EVAL_ROWS = 4096  # rows per block L-BFGS scores in (featcache.logreg)


def bn_normalise_(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """BatchNorm with running statistics, no affine, in place on ``x`` (B, D)."""
    return x.sub_(mean).mul_(torch.rsqrt(var + BN_EPS))


def fold(
    weight: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked heads' Linears with their BatchNorm affine folded in: W_h * gamma_h (H, C, D), b_h + W_h @ beta_h
    (H, C); as they are without an affine (None)."""
    if gamma is None:
        return weight, bias
    # multiply-and-sum, not einsum: einsum runs it as a batched matrix-vector product, about 3x slower forward and
    # backward on the CPU
    return weight * gamma[:, None, :], bias + (weight * beta[:, None, :]).sum(-1)


def count_hits(logits: torch.Tensor, y: torch.Tensor, k: int, hits: torch.Tensor) -> None:
    """Add the batch's top-1 and top-k hits of (B, C) ``logits`` against labels ``y`` to ``hits`` (2,)."""
    correct = logits.topk(k, dim=-1).indices == y[:, None]
    hits[0] += correct[:, 0].sum()
    hits[1] += correct.any(-1).sum()


@dataclass(frozen=True)
class Scores:
    """Top-1 and top-k (k = min(5, classes)) accuracy in percent; per block when asked for."""

    top1: float
    top5: float
    blocks: tuple[tuple[float, float], ...] = ()  # (top1, topk) of each block alone


@dataclass(frozen=True)
class LinearHead:
    """One fitted head (see the module docstring): ``weight`` (C, D) and ``bias`` (C,) act on normalised features.

    ``mean`` and ``scale`` are the normalisation's statistics (D,): the running mean and variance (``batchnorm``), or
    the mean and inverse std (``standardise``); None for ``none``. ``base_bias`` (C,) and ``shift`` (C, D) give the
    per-model block biases: the Linear's own bias, and W * beta (BatchNorm's shift through W; None without one).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    norm: str = "none"
    mean: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    eval_rows: int = SGD_EVAL_ROWS
    base_bias: torch.Tensor | None = None
    shift: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if (self.mean is None) != (self.norm == "none") or (self.scale is None) != (self.norm == "none"):
            raise ValueError(f"a '{self.norm}' head needs mean and scale exactly when it normalises")

    @property
    def n_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def n_features(self) -> int:
        return self.weight.shape[1]

    def to(self, device: torch.device | str) -> LinearHead:
        """A copy on ``device``, every tensor in fresh memory (as the solver's own copies are)."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device, copy=True).contiguous()
            moved[f.name] = value
        return replace(self, **moved)

    def block_bias(self, a: int, b: int) -> torch.Tensor:
        """The bias of features [a, b) alone: the Linear's own bias plus that block's share of BatchNorm's shift."""
        base = self.bias if self.base_bias is None else self.base_bias
        return base if self.shift is None else base + self.shift[:, a:b].sum(-1)

    def batches(self, X: Features, y: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(normalised rows (B, D), labels) block by block, on the head's device, as its solver scored them.

        Args:
            X: (N, D) features, a tensor or a row source; y: (N,) int64 labels on the head's device.
        """
        dev, n = self.weight.device, len(X)
        if self.norm == "standardise":
            yield from StandardisedBlocks(X, y, self.mean, self.scale, self.weight.dtype, dev, self.eval_rows, False)
            return
        buffer = BatchBuffer(min(n, self.eval_rows), self.n_features, dev, self.weight.dtype)
        for x, yb in eval_batches(X, y, buffer, self.eval_rows):
            yield (bn_normalise_(x, self.mean, self.scale) if self.norm == "batchnorm" else x), yb

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) logits of normalised rows, in the solver's arithmetic."""
        if self.norm == "standardise":
            return torch.addmm(self.bias, x, self.weight.T)
        return x @ self.weight.T + self.bias

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features (B, D) normalised, in a copy on the head's device (``x`` is left as it is)."""
        x = x.to(self.weight.device, self.weight.dtype, copy=True)
        if self.norm == "batchnorm":
            return bn_normalise_(x, self.mean, self.scale)
        return x.sub_(self.mean).mul_(self.scale) if self.norm == "standardise" else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) logits of raw features (``x`` is left as it is)."""
        return self.logits(self.normalise(x))

    @torch.no_grad()
    def score(
        self,
        X: Features,
        y,
        mask: Sequence[int] | None = None,
        blocks: Sequence[tuple[int, int, torch.Tensor]] = (),
    ) -> Scores:
        """Accuracy of the head on (X, y); optionally of each block of features alone.

        Args:
            X: (N, D) raw features, a tensor or a row source.
            y: (N,) labels: indices into ``mask`` when given, else into the head's classes.
            mask: the head's classes the labels mean, in label order (logits of the others are dropped).
            blocks: (a, b, bias) per block: features [a, b) with that bias (:meth:`block_bias`) alone.
        Returns:
            The scores; top-k with k = min(5, classes scored).
        """
        dev = self.weight.device
        y = torch.as_tensor(y).to(dev, torch.int64)
        keep = None if mask is None else torch.as_tensor(list(mask), dtype=torch.int64, device=dev)
        k = min(5, self.n_classes if keep is None else len(keep))
        hits = torch.zeros(1 + len(blocks), 2, dtype=torch.int64, device=dev)
        for x, yb in self.batches(X, y):
            parts = [self.logits(x)] + [x[:, a:b] @ self.weight[:, a:b].T + bias for a, b, bias in blocks]
            for i, logits in enumerate(parts):
                count_hits(logits if keep is None else logits[:, keep], yb, k, hits[i])
        # in Python: the same float on any device, as the solvers compute it
        (top1, topk), *per = [(100.0 * a / len(y), 100.0 * b / len(y)) for a, b in hits.tolist()]
        return Scores(top1, topk, tuple(per))


@torch.no_grad()
def split_heads(
    weight: torch.Tensor,
    bias: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    *,
    eval_rows: int = SGD_EVAL_ROWS,
    blocks: bool = False,
) -> list[LinearHead]:
    """H stacked SGD heads (weight (H, C, D), bias (H, C), BatchNorm's affine (H, D) and running statistics (D,), or
    None for Linear heads) as H :class:`LinearHead`, every tensor a copy in fresh memory.

    Args:
        blocks: also keep what per-model block scores need: the Linear's own bias and W * beta.
    """
    w, b = fold(weight, bias, gamma, beta)
    bn = gamma is not None
    heads = []
    for h in range(len(w)):
        stats = {"mean": running_mean.clone(), "scale": running_var.clone()} if bn else {}
        if blocks:
            stats |= {"base_bias": bias[h].clone(), "shift": (weight[h] * beta[h]).clone() if bn else None}
        norm = "batchnorm" if bn else "none"
        heads.append(LinearHead(w[h].clone(), b[h].clone(), norm, eval_rows=eval_rows, **stats))
    return heads
