"""The SGD heads' arithmetic: one training step of every head with closed-form gradients, and their scores.

A head (:mod:`featcache.heads`) is BatchNorm1d(D, affine) then Linear(D, C), or Linear only. On a batch x (B, D):

    xhat = batch_norm(x)                        shared by every head: its statistics depend on the batch only
    z_h = xhat * gamma_h + beta_h               (B, D), head h's affine
    logits_h = z_h @ W_h^T + b_h                (B, C)
    G_h = (softmax(logits_h) - onehot(y)) / B   the gradient of head h's mean cross-entropy at its logits
    dW_h = G_h^T z_h   db_h = sum_b G_h   dz_h = G_h W_h   dgamma_h = sum_b dz_h * xhat   dbeta_h = sum_b dz_h

These are the gradients autograd gives the head (the features take none); written out, a step is about twenty
kernels with no graph to build, which is what a step at batch 32 costs (on the CPU the Python and dispatch of
autograd were most of it). SGD (torch.optim.SGD semantics, dampening 0, weight decay on W and b only) then
updates every parameter of every head at once (:mod:`featcache.heads_sgd`: a few kernels over one flat storage, or
on CUDA torch's fused SGD kernel), whatever the number of heads.

Packed probes. Several probes ("groups") reading different columns of one feature matrix (the union of their
stores) train in one pass: BatchNorm's statistics are per column, so normalising the union once normalises each
probe's columns exactly as the probe alone would, and each group's heads read only their own columns (in the
probe's order). Groups of one width form a *family*: their K x H heads are stacked and share each batched product,
so a step costs a few kernels per width, not per probe.

Static buffers. A step reads and writes only tensors allocated once: the batch buffer, the labels, the flat
parameters, the learning rate (a tensor, set once per epoch) and, when the features are one tensor on the heads'
device, the epoch's permutation with a step counter on the device. It never asks the device for a value, so on
CUDA it is captured in a CUDA graph and replayed (:mod:`featcache.heads_graph`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .feed_batches import BatchBuffer, Feed, batch_bounds, eval_batches
from .heads_graph import Capture, StepGraph
from .heads_sgd import fused_plan, fused_sgd, sgd_update
from .linear_head import BN_EPS, SGD_EVAL_ROWS, LinearHead, bn_normalise_, count_hits, split_heads

if TYPE_CHECKING:
    from .heads import HeadConfig
    from .rows import Features

__all__ = ["BN_EPS", "BN_MOMENTUM", "EVAL_ROWS", "HeadTrainer"]

BN_MOMENTUM = 0.1  # torch.nn.BatchNorm1d's default (BN_EPS too, from featcache.linear_head)
EVAL_ROWS = SGD_EVAL_ROWS  # rows per forward when scoring: bounds memory (a saved head scores in the same blocks)


class _Family:
    """The heads of K groups of one width D: K x H stacked heads, their parameters views of the flat storage."""

    def __init__(self, columns: list[np.ndarray], n_features: int, H: int, C: int, bn: bool, device: torch.device):
        self.K, self.D, self.H, self.C, self.bn = len(columns), len(columns[0]), H, C, bn
        cols = np.stack(columns)
        first = cols[0]
        # How the family reads its columns of xhat (n, n_features): a view when one group reads a contiguous run
        # (a probe alone reads all of them), else a gather of every group's columns.
        self.span = (int(first[0]), int(first[-1]) + 1) if self.K == 1 and np.all(np.diff(first) == 1) else None
        self.index = None if self.span else torch.as_tensor(cols.ravel(), dtype=torch.int64, device=device)

    def sizes(self) -> list[tuple[int, ...]]:
        KH, C, D = self.K * self.H, self.C, self.D
        return [(KH, C, D), (KH, C)] + ([(KH, D), (KH, D)] if self.bn else [])

    def bind(self, param: list[torch.Tensor], grad: list[torch.Tensor], wd: torch.Tensor, rows: int) -> None:
        """Take the views of the flat storage, the heads' weight decays (K*H,) and buffers for ``rows`` rows."""
        self.W, self.b, *bn = param
        self.gW, self.gb, *gbn = grad
        self.gamma, self.beta = bn if self.bn else (None, None)
        self.ggamma, self.gbeta = gbn if self.bn else (None, None)
        KH, K, H, C, D = self.K * self.H, self.K, self.H, self.C, self.D
        self.wd3, self.wd2 = wd.view(KH, 1, 1), wd.view(KH, 1)
        like = {"device": wd.device, "dtype": wd.dtype}
        self.z = torch.empty(K, H, rows, D, **like)
        self.dz = torch.empty(K, H, rows, D, **like) if self.bn else None
        self.logits = torch.empty(KH, rows, C, **like)
        self.minus_one = torch.full((KH, rows, 1), -1.0, **like)
        self.loss = torch.zeros(KH, device=wd.device, dtype=torch.float64)

    def columns(self, xhat: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """The family's columns of xhat (n, n_features): (K, 1, n, D), or group k's (n, D)."""
        if self.span is not None:
            x = xhat[:, self.span[0] : self.span[1]]
            return x if k is not None else x[None, None]
        if k is not None:
            return xhat.index_select(1, self.index[k * self.D : (k + 1) * self.D])
        return xhat.index_select(1, self.index).view(len(xhat), self.K, self.D).permute(1, 0, 2).unsqueeze(1)

    def step(self, xhat: torch.Tensor, y: torch.Tensor, n: int) -> None:
        """Forward, loss and gradients of every head of the family on the batch (xhat, y) of n rows."""
        K, H, D = self.K, self.H, self.D
        full = n == self.z.shape[2]  # a full batch uses the static buffers; the epoch's last, shorter one fresh ones
        x4 = self.columns(xhat)  # (K, 1, n, D)
        z4 = self.z if full else torch.empty(K, H, n, D, device=xhat.device, dtype=xhat.dtype)
        if self.bn:
            torch.addcmul(self.beta.view(K, H, 1, D), x4, self.gamma.view(K, H, 1, D), out=z4)
        else:
            z4.copy_(x4.expand(z4.shape))
        z = z4.view(K * H, n, D)
        logits = torch.baddbmm(self.b.unsqueeze(1), z, self.W.transpose(1, 2), out=self.logits if full else None)
        logp = torch.log_softmax(logits, -1)
        yi = y.view(1, n, 1).expand(K * H, n, 1)
        self.loss.sub_(logp.gather(-1, yi).sum((1, 2)))  # the batch's summed cross-entropy, per head
        G = logp.exp_().scatter_add_(-1, yi, self.minus_one[:, :n]).div_(n)  # softmax - onehot, of the mean loss
        torch.bmm(G.transpose(1, 2), z, out=self.gW)
        torch.sum(G, 1, out=self.gb)
        if self.bn:
            dz4 = torch.bmm(G, self.W, out=self.dz.view(K * H, n, D) if full else None).view(K, H, n, D)
            torch.sum(dz4, 2, out=self.gbeta.view(K, H, D))
            torch.sum(dz4.mul_(x4), 2, out=self.ggamma.view(K, H, D))

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_h * gamma_h, b_h + W_h @ beta_h): the heads as plain Linears on xhat, for scoring."""
        if not self.bn:
            return self.W, self.b
        return self.W * self.gamma[:, None, :], self.b + (self.W * self.beta[:, None, :]).sum(-1)


class HeadTrainer:
    """The heads of one or more groups (probes) on one feature matrix: parameters, the step, scores.

    Args:
        config: the heads' hyperparameters (:class:`featcache.heads.HeadConfig`); every group has its grid.
        n_features: columns of the features the trainer is fed.
        n_classes: C.
        groups: each group's columns of the features, in its own order (None: all of them, in order).
        device, dtype: where and in what the heads live and train.
        capture: how to record a step in a graph (:func:`featcache.heads_graph.cuda_capture`); None: eager.
        rows: the most rows a batch has (default ``config.batch_size``).

    Attributes:
        param, grad, momentum: the flat storage of every head's W, b (and gamma, beta), of their gradients and of
            SGD's momentum.
        running_mean, running_var: BatchNorm's running statistics of every column (None for 'linear').
        steps: SGD steps taken.
    """

    def __init__(
        self,
        config: HeadConfig,
        n_features: int,
        n_classes: int,
        groups: Sequence[Sequence[int] | np.ndarray | None],
        device: torch.device,
        dtype: torch.dtype,
        capture: Capture | None = None,
        rows: int | None = None,
    ):
        self.config, self.n_features, self.n_classes = config, n_features, n_classes
        self.device, self.dtype, self.capture = torch.device(device), dtype, capture
        self.H, self.bn = len(config.grid), config.head == "bn-linear"
        cols = [np.arange(n_features) if g is None else np.asarray(g, dtype=np.int64) for g in groups]
        self.group_columns = cols
        widths = list(dict.fromkeys(len(c) for c in cols))
        members = [[g for g, c in enumerate(cols) if len(c) == w] for w in widths]
        self.families = [_Family([cols[g] for g in m], n_features, self.H, n_classes, self.bn, self.device)
                         for m in members]  # fmt: skip
        self.where = {g: (f, k) for f, m in enumerate(members) for k, g in enumerate(m)}  # group -> (family, k)
        shapes = [s for fam in self.families for s in fam.sizes()]
        total = sum(int(np.prod(s)) for s in shapes)
        like = {"device": self.device, "dtype": dtype}
        self.param, self.grad, self.momentum = (torch.zeros(total, **like) for _ in range(3))
        self._bind(shapes, config.batch_size if rows is None else rows)
        self.running_mean = torch.zeros(n_features, **like) if self.bn else None
        self.running_var = torch.ones(n_features, **like) if self.bn else None
        self.lr = torch.zeros((), **like)  # set per epoch: a tensor, so a captured step reads the new value
        self.lr_heads = [torch.zeros((), **like) for _ in range(self.H)]  # the fused kernel's, one a head
        self.steps, self._labels = 0, None
        self._fused = None
        if fused_sgd(self.device, dtype):
            self._fused = fused_plan(self._views, self.families, config.grid, self.bn, self.lr_heads)
        self._init_params()

    def _bind(self, shapes: list[tuple[int, ...]], rows: int) -> None:
        self.rows = rows
        views: dict[str, list[torch.Tensor]] = {"param": [], "grad": [], "momentum": []}
        for name, flat in (("param", self.param), ("grad", self.grad), ("momentum", self.momentum)):
            at = 0
            for s in shapes:
                n = int(np.prod(s))
                views[name].append(flat[at : at + n].view(s))
                at += n
        i = 0
        wds = torch.tensor([wd for _, wd in self.config.grid], device=self.device, dtype=self.dtype)
        for fam in self.families:
            k = len(fam.sizes())
            fam.bind(views["param"][i : i + k], views["grad"][i : i + k], wds.repeat(fam.K), rows)
            i += k
        self.x = BatchBuffer(rows, self.n_features, self.device, self.dtype)
        self.y = torch.empty(rows, dtype=torch.int64, device=self.device)
        self._views = views

    def _init_params(self) -> None:
        # One float32 (C, D) draw on the CPU per group, repeated over its heads: every group starts where the same
        # probe run alone starts, on any device and in any dtype.
        for g, c in enumerate(self.group_columns):
            fam, k = self.families[self.where[g][0]], self.where[g][1]
            gen = torch.Generator().manual_seed(self.config.seed)
            w = torch.empty(self.n_classes, len(c)).normal_(0.0, self.config.init_std, generator=gen)
            fam.W[k * self.H : (k + 1) * self.H] = w.to(self.device, self.dtype)
            if fam.gamma is not None:
                fam.gamma.fill_(1.0)

    # --- training -----------------------------------------------------------------------------------------------
    def set_lr(self, lrs: Sequence[float]) -> None:
        """Every head's learning rate for the coming steps: one value, or one per head of the grid."""
        if self._fused is not None:  # one lr tensor per head, read by the fused kernel
            for t, lr in zip(self.lr_heads, lrs * (self.H if len(lrs) == 1 else 1), strict=True):
                t.fill_(lr)
            return
        if len(set(lrs)) == 1:
            self.lr.fill_(lrs[0])
            return
        if self.lr.ndim == 0:  # a grid: one lr per parameter, refreshed per epoch
            self.lr = torch.empty_like(self.param)
        per_head = torch.tensor(lrs, device=self.device, dtype=self.dtype)
        at = 0
        for fam in self.families:
            lr = per_head.repeat(fam.K)
            for s in fam.sizes():
                n = int(np.prod(s))
                self.lr[at : at + n].view(s).copy_(lr.view(-1, *[1] * (len(s) - 1)).expand(s))
                at += n

    def step(self, n: int, X: torch.Tensor | None = None, idx: torch.Tensor | None = None) -> None:
        """One SGD step of every head on n rows: ``X[idx]`` (with the labels set by :meth:`fit_epoch`), or the
        batch already in the buffers (``self.x.x[:n]``, ``self.y[:n]``)."""
        x, y = self.x.x[:n], self.y[:n]
        if X is not None:
            if X.dtype == x.dtype:
                torch.index_select(X, 0, idx, out=x)
            else:  # gather in the features' dtype, cast on the device: a float16 cache moves half the bytes
                x.copy_(torch.index_select(X, 0, idx, out=self.x.raw(X.dtype, n)))
            torch.index_select(self._labels, 0, idx, out=y)
        xhat = x
        if self.bn:  # normalised with the batch's statistics; the running ones stepped as torch's BatchNorm1d does
            xhat = F.batch_norm(x, self.running_mean, self.running_var, None, None, True, BN_MOMENTUM, BN_EPS)
        for fam in self.families:
            fam.step(xhat, y, n)
        self._update()

    def _update(self) -> None:
        sgd_update(self._fused, self.families, self.param, self.grad, self.momentum, self.lr, self.config)

    def _counted_step(self) -> None:
        # The full-batch step of a graph: the batch's rows come from the epoch's permutation at a device counter.
        idx = torch.index_select(self._order2d, 0, self._t).view(-1)
        self.step(self.rows, self._X, idx)
        self._t.add_(1)

    def fit_epoch(self, feed: Feed, e: int, labels: torch.Tensor, first: bool) -> int:
        """Train every head on epoch e of ``feed``; returns the rows seen (a final batch of one row is left out).

        Args:
            feed: the epoch's batches, or (:meth:`featcache.feed_batches.Feed.tensor_epoch`) its features as one
                tensor on this device and their order, which the step gathers from itself.
            labels: (N,) int64 labels on this device.
            first: the first epoch of a fit (the first graph warms up first).
        """
        B, seed = self.rows, self.config.seed
        warm = 3 if first else 0
        plan = feed.tensor_epoch(e, seed=seed, device=self.device, dim=self.n_features)
        if plan is not None:
            X, order = plan
            bounds = batch_bounds(len(order), B, drop_single=True)
            self._labels, order = labels, order.to(self.device)
            full = len(order) // B if self.capture is not None else 0
            if full:
                self.x.raw(X.dtype, B)  # allocated now, not while a graph is captured
                self._X, self._order2d = X, order[: full * B].view(full, B)
                self._t = torch.zeros(1, dtype=torch.int64, device=self.device)
                graph = StepGraph(self._counted_step, self.capture, warm, self._pool())
                for _ in range(full):
                    graph()
                self._X = self._order2d = None  # a graph holds the epoch's features no longer than the epoch
            for a, b in bounds[full:]:
                self.step(b - a, X, order[a:b])
            self.steps += len(bounds)
            return bounds[-1][1]
        graph = StepGraph(lambda: self.step(B), self.capture, warm, self._pool())
        seen = 0
        for x, yb in feed.batches(e, labels, self.x, seed=seed, batch_size=B):
            n = len(yb)
            if x.data_ptr() != self.x.x.data_ptr():
                raise ValueError(f"{type(feed).__name__}.batches must fill the batch buffer it is given")
            self.y[:n].copy_(yb)
            if n == B:
                graph()
            else:
                self.step(n)
            seen += n
            self.steps += 1
        return seen

    def _pool(self) -> object:
        if self.capture is None or self.device.type != "cuda":
            return None
        if getattr(self, "_graph_pool", None) is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        return self._graph_pool

    def take_losses(self) -> list[torch.Tensor]:
        """Each group's (H,) summed training loss since the last call (float64, on the device), then zeroed."""
        out = []
        for g in range(len(self.group_columns)):
            f, k = self.where[g]
            out.append(self.families[f].loss[k * self.H : (k + 1) * self.H].clone())
        for fam in self.families:
            fam.loss.zero_()
        return out

    def finish(self) -> None:
        """Free what only training needs (gradients, momentum, batch buffers); the heads still score."""
        self.grad = self.momentum = self.x = self.y = self._labels = self._views = self._fused = None
        self.lr = torch.zeros((), device=self.device, dtype=self.dtype)
        for fam in self.families:
            fam.gW = fam.gb = fam.ggamma = fam.gbeta = fam.z = fam.dz = fam.logits = fam.minus_one = None

    # --- scores -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, X: Features, y: torch.Tensor) -> list[dict[str, list[float]]]:
        """Each group's top-1 and top-k (k = min(5, C)) accuracy of every head, in percent, with the running
        statistics: ``[{"top1": [H floats], "top5": [H floats]}]``."""
        n, k = len(y), min(5, self.n_classes)
        hits = [torch.zeros(self.H, 2, dtype=torch.int64, device=self.device) for _ in self.group_columns]
        for logits, yb in self._logits(X, torch.as_tensor(y)):
            for g, per_head in enumerate(logits):
                for h, lg in enumerate(per_head):
                    count_hits(lg, yb, k, hits[g][h])
        out = []
        for h in hits:
            top1, topk = (h.double() * 100 / n).T.tolist()
            out.append({"top1": top1, "top5": topk})
        return out

    @torch.no_grad()
    def logits(self, X: Features) -> list[torch.Tensor]:
        """Each group's logits (H, N, C), with the running statistics."""
        parts: list[list[torch.Tensor]] = [[] for _ in self.group_columns]
        for logits, _ in self._logits(X, torch.zeros(len(X), dtype=torch.int64)):
            for part, per_head in zip(parts, logits, strict=True):
                part.append(torch.stack(per_head))
        return [torch.cat(p, dim=1) for p in parts]

    @torch.no_grad()
    def scoring_heads(self, g: int, blocks: bool = False) -> list[LinearHead]:
        """Group g's heads as they score, in fresh memory (:func:`featcache.linear_head.split_heads`): what a saved
        head of them holds, so it scores the same bits."""
        stats = (None, None)
        if self.bn:
            index = torch.as_tensor(self.group_columns[g], device=self.device)
            stats = (self.running_mean[index], self.running_var[index])
        return split_heads(*self.tensors(g), *stats, eval_rows=EVAL_ROWS, blocks=blocks)

    def _logits(self, X: Features, y: torch.Tensor):
        """(per group, per head (B, C) logits; labels) for each block of rows of X: one product per head, as a saved
        head scores (:class:`featcache.linear_head.LinearHead`): one product of every head rounds some logits
        otherwise, and a near tie can then flip."""
        heads = [self.scoring_heads(g) for g in range(len(self.group_columns))]  # once: fixed during a pass
        buffer = BatchBuffer(min(len(X), EVAL_ROWS), self.n_features, self.device, self.dtype)
        for x, yb in eval_batches(X, y.to(self.device), buffer, EVAL_ROWS):
            xhat = bn_normalise_(x, self.running_mean, self.running_var) if self.bn else x
            out = []
            for g, group in enumerate(heads):
                f, k = self.where[g]
                xg = self.families[f].columns(xhat, k)
                out.append([hd.logits(xg) for hd in group])
            yield out, yb

    # --- one group as its own trainer -------------------------------------------------------------------------
    def group(self, g: int) -> HeadTrainer:
        """Group g's heads as a trainer of their own, on its columns only (copies of its parameters and statistics):
        what the same probe fitted alone would hold."""
        cols = self.group_columns[g]
        alone = HeadTrainer(self.config, len(cols), self.n_classes, [None], self.device, self.dtype, rows=2)
        alone.finish()
        f, k = self.where[g]
        fam, H = self.families[f], self.H
        for mine, theirs in zip(alone.tensors(0), (fam.W, fam.b, fam.gamma, fam.beta), strict=True):
            if mine is not None:
                mine.copy_(theirs[k * H : (k + 1) * H])
        if self.bn:
            index = torch.as_tensor(cols, device=self.device)
            alone.running_mean.copy_(self.running_mean[index])
            alone.running_var.copy_(self.running_var[index])
        alone.steps = self.steps
        return alone

    def tensors(self, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Group g's (W (H, C, D), b (H, C), gamma (H, D), beta (H, D)): views of the flat storage."""
        f, k = self.where[g]
        fam, s = self.families[f], slice(k * self.H, (k + 1) * self.H)
        bn = (None, None) if fam.gamma is None else (fam.gamma[s], fam.beta[s])
        return fam.W[s], fam.b[s], *bn
