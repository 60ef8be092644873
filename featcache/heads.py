"""Linear heads on cached features: a whole weight-decay grid trained in one pass over the data.

The protocol is the seed's (REFERENCE.md, "The seed's linear-probe protocol"): BatchNorm1d(D, affine) then
Linear(D, C), SGD with Nesterov momentum, the lr cut at fixed epochs, weight decay on the Linear only.
A grid of H weight decays is trained as H heads that see the same batches. BatchNorm's
normalisation depends only on the batch, so it is computed once and shared; each head's affine
(gamma_h, beta_h) is folded into its Linear, W'_h = W_h * gamma_h and b'_h = b_h + W_h @ beta_h, so all
heads are one (B, D) x (D, H*C) matrix product. Autograd through the fold gives gamma, beta, W and b the
gradients of the unfolded head, so head h ends where a solo run with weight decay wd_h ends
(tests/test_heads.py checks this, and checks a head against torch.nn + torch.optim.SGD + MultiStepLR).
Scoring takes one product per head (:class:`featcache.linear_head.LinearHead`), the arithmetic a saved head of it
scores with: one product of all heads rounds some logits otherwise, and a near tie can flip.

This module is the arithmetic only: which rows form each batch is the feed's (:mod:`featcache.feed`), and the
features come from it or are a tensor or a row source; it never builds or runs a backbone.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from featcache.errors import ConfigError, FeatcacheError, unknown_name
from featcache.feed_batches import BatchBuffer, Feed, as_feed, eval_batches
from featcache.linear_head import BN_EPS, SGD_EVAL_ROWS, LinearHead, bn_normalise_, count_hits, fold, split_heads
from featcache.rows import EpochFeatures, Features, RowSource

# RowSource, Features and EpochFeatures live in featcache.rows; named here too, where they were first defined.
__all__ = ["HEADS", "EpochFeatures", "Features", "HeadConfig", "MultiHeadProbe", "NonFiniteLossError", "RowSource"]

logger = logging.getLogger(__name__)

HEADS = ("bn-linear", "linear")
_BN_EPS, _BN_MOMENTUM = BN_EPS, 0.1  # torch.nn.BatchNorm1d's defaults
_EVAL_ROWS = SGD_EVAL_ROWS  # rows per forward when scoring: bounds memory (a saved head scores in the same blocks)


class NonFiniteLossError(FeatcacheError):
    """A head's training loss became NaN or Inf: its features hold NaN/Inf, or its learning rate diverged."""

    def __init__(self, heads: list[int], epoch: int):
        self.heads, self.epoch = heads, epoch
        super().__init__(f"training loss of head(s) {heads} became non-finite at epoch {epoch}")


@dataclass(frozen=True)
class HeadConfig:
    """Hyperparameters of the heads and their optimizer; the defaults are the seed's CIFAR protocol.

    Raises:
        ConfigError: a value is out of range; the message names the command-line option.
    """

    head: str = "bn-linear"  # BatchNorm1d(D, affine) then Linear(D, C); or 'linear' (Linear only)
    epochs: int = 28
    lr: float = 0.01
    momentum: float = 0.9  # torch.optim.SGD semantics, dampening 0
    nesterov: bool = True
    milestones: tuple[int, ...] = (8, 16, 24)  # 0-based epochs where lr *= gamma (MultiStepLR semantics)
    gamma: float = 0.1
    batch_size: int = 256
    init_std: float = 0.01  # std of the normal init of the Linear weight; the bias starts at 0
    seed: int = 0  # seeds the weight init and the feed's (each epoch's batches)
    weight_decays: tuple[float, ...] = (1e-4,)  # one head per value; on the Linear weight and bias only
    # A learning-rate grid: None trains every head at ``lr``; otherwise ``lr`` is unused and the heads are the
    # product lrs x weight_decays (see :attr:`grid`). The milestones scale every head's lr alike.
    lrs: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # Lists from a CLI or YAML become tuples, so the config stays hashable.
        object.__setattr__(self, "milestones", tuple(self.milestones))
        object.__setattr__(self, "weight_decays", tuple(self.weight_decays))
        if self.lrs is not None:
            object.__setattr__(self, "lrs", tuple(self.lrs))
        if self.head not in HEADS:
            raise unknown_name("head", self.head, HEADS, hint="choose one with --head")
        wds, bs, lrs = self.weight_decays, self.batch_size, (self.lr,) if self.lrs is None else self.lrs
        for ok, option, value, what in (
            (isinstance(self.epochs, int) and self.epochs > 0, "--epochs", self.epochs, "a positive integer"),
            # BatchNorm normalises by the batch variance, which a single row does not have.
            (isinstance(bs, int) and bs > 1, "--batch-size", bs, "an integer >= 2"),
            (0 < self.lr < math.inf, "--lr", self.lr, "a positive number"),
            (len(lrs) > 0 and all(0 < lr < math.inf for lr in lrs), "--lr", lrs, "one or more positive numbers"),
            (len(wds) > 0 and all(0 <= wd < math.inf for wd in wds), "--wd", wds, "one or more numbers >= 0"),
            (0 <= self.momentum < 1, "--momentum", self.momentum, "in [0, 1)"),
            (self.momentum > 0 or not self.nesterov, "--momentum", self.momentum, "> 0 with Nesterov"),
        ):
            if not ok:
                raise ConfigError(f"{option} must be {what}, got {value!r}")

    @property
    def grid(self) -> tuple[tuple[float, float], ...]:
        """Each head's (lr, weight decay): lr-major, so head h = i * len(weight_decays) + j is (lrs[i], wds[j])."""
        lrs = (self.lr,) if self.lrs is None else self.lrs
        return tuple((lr, wd) for lr in lrs for wd in self.weight_decays)


class _SGD:
    """torch.optim.SGD (dampening 0) over stacked head tensors, with a weight-decay tensor per parameter.

    torch.optim.SGD takes one scalar decay per param group, but here the decay varies along the head axis,
    so each decay is a tensor broadcast against its parameter ((H, 1, 1) for a (H, C, D) weight) or None.
    The lr of :meth:`step` is a float (every head alike) or, for a learning-rate grid, one such tensor per
    parameter.
    """

    def __init__(self, params: list[torch.Tensor], decays: list, momentum: float, nesterov: bool):
        self.params, self.decays, self.momentum, self.nesterov = params, decays, momentum, nesterov
        self.bufs: list[torch.Tensor | None] = [None] * len(params)

    @torch.no_grad()
    def step(self, grads: tuple[torch.Tensor, ...], lr: float | list[torch.Tensor]) -> None:
        for i, (p, d, wd) in enumerate(zip(self.params, grads, self.decays, strict=True)):
            if wd is not None:
                d = torch.addcmul(d, wd, p)  # d_p = grad + wd * p
            if self.momentum:
                if self.bufs[i] is None:
                    self.bufs[i] = d.clone()  # torch starts the buffer at d_p, not at 0
                else:
                    self.bufs[i].mul_(self.momentum).add_(d)
                d = d.add(self.bufs[i], alpha=self.momentum) if self.nesterov else self.bufs[i]
            if isinstance(lr, list):
                p.addcmul_(d, lr[i], value=-1)  # not in place on d: without Nesterov d is the buffer
            else:
                p.add_(d, alpha=-lr)


class MultiHeadProbe:
    """H = len(config.grid) linear heads fitted together on cached features (estimator style).

    Args:
        config: the heads' hyperparameters.
        n_features: feature dimension D.
        n_classes: number of classes C.
        device: where the heads live and train; features are moved there batch by batch.
        dtype: dtype of the parameters and of the batches (features of any float dtype are cast).

    Attributes (after :meth:`fit`):
        weight_ (H, C, D), bias_ (H, C): each head's Linear.
        gamma_, beta_ (H, D): each head's BatchNorm affine; None for the 'linear' head.
        running_mean_, running_var_ (D,): BatchNorm running statistics, shared by the heads (or None).
        num_batches_tracked_: SGD steps taken.
        history_: one dict per epoch, ``{"epoch": e (1-based), "lr": lr (with ``config.lrs``: [H floats]),
            "train_loss": [H floats],
            "<name>_top1": [H floats, %], "<name>_top5": [H floats, %]}`` for each evaluation set.
        seconds_: wall time of :meth:`fit`, evaluations included.
        fit_epochs_: epochs trained.
    """

    def __init__(self, config: HeadConfig, n_features: int, n_classes: int, device="cpu", dtype=torch.float):
        self.config = config
        self.n_features = n_features
        self.n_classes = n_classes
        self.device = device
        self.dtype = dtype

    @property
    def n_heads(self) -> int:
        return len(self.config.grid)

    @property
    def head_grid(self) -> tuple[tuple[float, float], ...]:
        """Each head's (lr, weight decay), head h at index h (``config.grid``)."""
        return self.config.grid

    def fit(
        self,
        X: Feed | Features | EpochFeatures,
        y,
        eval_sets: Mapping[str, tuple] | None = None,
        on_epoch: Callable[[MultiHeadProbe, int], None] | None = None,
    ) -> MultiHeadProbe:
        """Train all heads in one pass per epoch; score every ``eval_sets`` entry after each epoch.

        Args:
            X: what to train on: a :class:`featcache.feed_batches.Feed` (as :func:`featcache.feed.train_feed`
                builds), or features that :class:`featcache.feed_batches.Shuffled` feeds: a (N, D) float tensor on
                any device, a :class:`RowSource`, or :class:`EpochFeatures` giving each epoch's (augmented views
                of the same rows).
            y: (N,) integer class labels in [0, C), a tensor or numpy array.
            eval_sets: name -> (features, labels), scored with the running BatchNorm statistics.
            on_epoch: ``on_epoch(self, e)`` after epoch e (1-based) is scored (e.g. to keep :meth:`scoring_heads`).
        Returns:
            self, with the learned attributes set.
        Raises:
            ValueError: shapes, dtypes or labels do not match ``n_features``/``n_classes``, or N < 2.
            TypeError: features are neither a tensor nor a row source.
            NonFiniteLossError: a head's training loss became NaN or Inf (names the heads and the epoch).
        """
        cfg, dev, H = self.config, torch.device(self.device), self.n_heads
        if not isinstance(X, (Feed, EpochFeatures)):
            self._check_rows(X, "X")
        feed = as_feed(X)
        n = len(feed)
        y = self._check_labels(y, n, "y")
        if n < 2:
            raise ValueError(f"X has {n} row(s); a BatchNorm head needs at least 2 training rows")
        evals = {}
        for name, (Xe, ye) in (eval_sets or {}).items():
            evals[name] = (Xe, self._check_labels(ye, self._check_rows(Xe, name), name))

        start = time.perf_counter()
        self._init_state()
        params = [p for p in (self.weight_, self.bias_, self.gamma_, self.beta_) if p is not None]
        wd = torch.tensor([wd for _, wd in cfg.grid], device=dev, dtype=self.dtype)
        # One lr (lrs None or of length 1) stays a float, so that path is exactly the solo trainer's.
        head_lrs = [lr for lr, _ in cfg.grid] if cfg.lrs is not None and len(cfg.lrs) > 1 else None
        base_lr = cfg.lrs[0] if cfg.lrs is not None else cfg.lr
        decays = [wd[:, None, None], wd[:, None], None, None][: len(params)]  # none on gamma, beta
        sgd = _SGD(params, decays, cfg.momentum, cfg.nesterov)
        buffer = self._buffer(min(n, cfg.batch_size))
        sq = torch.empty_like(buffer.x)  # x * x, for the batch variance
        self.history_: list[dict[str, Any]] = []
        for epoch in range(cfg.epochs):
            lr = base_lr * cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), epoch)
            step_lr: float | list[torch.Tensor] = lr
            if head_lrs is not None:
                # Per head, as a float would give it: lr_h * gamma^k rounded once, then cast.
                factor = cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), epoch)
                lr = [h_lr * factor for h_lr in head_lrs]
                lr_t = torch.tensor(lr, device=dev, dtype=self.dtype)
                step_lr = [lr_t.view(-1, *[1] * (p.ndim - 1)) for p in params]
            batches = feed.batches(epoch, y, buffer, seed=cfg.seed, batch_size=cfg.batch_size)
            loss_sum, seen = torch.zeros(H, device=dev, dtype=torch.float64), 0
            for p in params:
                p.requires_grad_(True)
            for x, yb in batches:
                logits = self._forward(x, sq)  # (B, H, C)
                # Row b * H + h of the flattened logits is head h on sample b, hence repeat_interleave.
                losses = F.cross_entropy(logits.flatten(0, 1), yb.repeat_interleave(H), reduction="none")
                losses = losses.view(-1, H).mean(0)  # (H,): each head's mean loss
                # Heads share no parameter, so the sum gives each head exactly its solo gradient.
                sgd.step(torch.autograd.grad(losses.sum(), params), step_lr)
                loss_sum += losses.detach().double() * len(yb)
                seen += len(yb)
            for p in params:
                p.requires_grad_(False)
            bad = torch.nonzero(~torch.isfinite(loss_sum)).flatten().tolist()
            if bad:  # its accuracy would be chance level: never report it as a result
                raise NonFiniteLossError(bad, epoch + 1)
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": (loss_sum / seen).tolist()}
            for name, (Xe, ye) in evals.items():
                acc = self._accuracy(Xe, ye)
                record[f"{name}_top1"], record[f"{name}_top5"] = acc["top1"], acc["top5"]
            self.history_.append(record)
            logger.info("epoch %d/%d %s", epoch + 1, cfg.epochs, record)
            if on_epoch is not None:
                on_epoch(self, epoch + 1)
        self.fit_epochs_ = cfg.epochs
        self.seconds_ = time.perf_counter() - start
        logger.info("fitted %d head(s), %d epochs, in %.2f s", H, cfg.epochs, self.seconds_)
        return self

    @torch.no_grad()
    def predict_logits(self, X: Features) -> torch.Tensor:
        """Logits of every head, using the running BatchNorm statistics.

        Args:
            X: (N, D) features, a tensor or a row source.
        Returns:
            (H, N, C) tensor on ``device``.
        Raises:
            RuntimeError: the probe is not fitted.
        """
        self._check_fitted()
        n = self._check_rows(X, "X")
        heads, zeros = self.scoring_heads(), torch.zeros(n, dtype=torch.int64)
        batches = self._normalised(eval_batches(X, zeros, self._buffer(min(n, _EVAL_ROWS)), _EVAL_ROWS))
        return torch.cat([torch.stack([hd.logits(x) for hd in heads]) for x, _ in batches], dim=1)

    def scoring_heads(self, blocks: bool = False) -> list[LinearHead]:
        """Each head as it scores, in fresh memory (:func:`featcache.linear_head.split_heads`; ``blocks``: with what
        per-model scores need): a head saved from these scores the same bits. Raises RuntimeError unless fitted."""
        self._check_fitted()
        bn = (self.gamma_, self.beta_, self.running_mean_, self.running_var_)
        return split_heads(self.weight_, self.bias_, *bn, eval_rows=_EVAL_ROWS, blocks=blocks)

    def evaluate(self, X: Features, y) -> dict[str, list[float]]:
        """Top-1 and top-k (k = min(5, C)) accuracy of every head, in percent.

        Args:
            X: (N, D) features, a tensor or a row source; y: (N,) integer labels.
        Returns:
            ``{"top1": [H floats], "top5": [H floats]}``.
        Raises:
            RuntimeError: the probe is not fitted.
        """
        self._check_fitted()
        return self._accuracy(X, self._check_labels(y, self._check_rows(X, "X"), "y"))

    def head_state(self, h: int) -> dict[str, torch.Tensor]:
        """Unfolded parameters of head ``h``: a state_dict for ``Sequential(bn=BatchNorm1d, fc=Linear)``.

        Args:
            h: head index, as in ``config.grid`` (:attr:`head_grid`).
        Returns:
            ``fc.weight`` (C, D), ``fc.bias`` (C,) and, for 'bn-linear', ``bn.weight``, ``bn.bias``,
            ``bn.running_mean``, ``bn.running_var``, ``bn.num_batches_tracked``; copies, safe to save.
        Raises:
            RuntimeError: the probe is not fitted.
            IndexError: ``h`` is not a head index.
        """
        self._check_fitted()
        if not 0 <= h < self.n_heads:
            raise IndexError(f"head {h} out of range: this probe has {self.n_heads} head(s)")
        state = {"fc.weight": self.weight_[h].clone(), "fc.bias": self.bias_[h].clone()}
        if self.gamma_ is not None:
            state["bn.weight"], state["bn.bias"] = self.gamma_[h].clone(), self.beta_[h].clone()
            state["bn.running_mean"] = self.running_mean_.clone()
            state["bn.running_var"] = self.running_var_.clone()
            state["bn.num_batches_tracked"] = torch.tensor(self.num_batches_tracked_)
        return state

    def _init_state(self) -> None:
        H, C, D = self.n_heads, self.n_classes, self.n_features
        like = {"device": torch.device(self.device), "dtype": self.dtype}
        # One float32 (C, D) draw on the CPU, repeated over heads: head h starts where a solo run with the
        # same seed starts, on any device and in any dtype.
        g = torch.Generator().manual_seed(self.config.seed)
        w = torch.empty(C, D).normal_(0.0, self.config.init_std, generator=g)
        self.weight_ = w.to(**like).repeat(H, 1, 1)
        self.bias_ = torch.zeros(H, C, **like)
        self.num_batches_tracked_ = 0
        bn = self.config.head == "bn-linear"
        self.gamma_ = torch.ones(H, D, **like) if bn else None
        self.beta_ = torch.zeros(H, D, **like) if bn else None
        self.running_mean_ = torch.zeros(D, **like) if bn else None
        self.running_var_ = torch.ones(D, **like) if bn else None

    def _buffer(self, rows: int) -> BatchBuffer:
        return BatchBuffer(rows, self.n_features, torch.device(self.device), self.dtype)

    def _forward(self, x: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> (B, H, C) logits in training; also steps the running statistics.

        x is the feed's batch buffer and is normalised in place; ``sq`` a buffer as large for x * x.
        """
        self.num_batches_tracked_ += 1
        if self.gamma_ is not None:
            # Two passes, not torch.var_mean(x, dim=0): on the CPU that is a scalar per-column loop, about
            # 10x slower than these vectorised passes (the largest cost of a step), and no more accurate.
            mean = x.mean(0)
            x = x.sub_(mean)
            var = torch.mul(x, x, out=sq[: len(x)]).mean(0)  # biased: what the batch is normalised by
            with torch.no_grad():
                m, n = _BN_MOMENTUM, x.shape[0]
                self.running_mean_.mul_(1 - m).add_(mean, alpha=m)
                self.running_var_.mul_(1 - m).add_(var * (n / (n - 1)), alpha=m)  # unbiased, as torch
            x = x.mul_(torch.rsqrt(var + _BN_EPS))  # (B, D) xhat, shared by every head
        w, b = fold(self.weight_, self.bias_, self.gamma_, self.beta_)  # (H, C, D), (H, C)
        return (x @ w.flatten(0, 1).T + b.flatten()).unflatten(1, b.shape)

    def _normalised(self, batches):
        """Scoring batches, normalised in place with the running statistics (shared by every head)."""
        for x, yb in batches:
            yield (x if self.gamma_ is None else bn_normalise_(x, self.running_mean_, self.running_var_)), yb

    @torch.no_grad()
    def _accuracy(self, X: Features, y: torch.Tensor) -> dict[str, list[float]]:
        # One product per head, as a saved head of it scores (featcache.saved_head): one product of every head at
        # once rounds some logits otherwise, and a near tie can then flip.
        n, k = len(y), min(5, self.n_classes)
        heads = self.scoring_heads()
        hits = torch.zeros(self.n_heads, 2, dtype=torch.int64, device=torch.device(self.device))
        for x, yb in self._normalised(eval_batches(X, y, self._buffer(min(n, _EVAL_ROWS)), _EVAL_ROWS)):
            for h, head in enumerate(heads):
                count_hits(head.logits(x), yb, k, hits[h])
        top1, topk = (hits.double() * 100 / n).T.tolist()
        return {"top1": top1, "top5": topk}

    def _check_rows(self, X: Any, name: str) -> int:
        if isinstance(X, torch.Tensor):
            if X.ndim != 2 or X.shape[1] != self.n_features or not X.is_floating_point():
                got = f"{X.dtype} {tuple(X.shape)}"
                raise ValueError(f"{name}: need float features of shape (N, {self.n_features}); got {got}")
        elif not isinstance(X, RowSource):
            kind = type(X).__name__
            raise TypeError(f"{name}: expected a (N, D) tensor or a row source with take(), got {kind}")
        if len(X) == 0:
            raise ValueError(f"{name} has no rows")
        return len(X)

    def _check_labels(self, y: Any, n: int, name: str) -> torch.Tensor:
        y = torch.as_tensor(y)
        if y.shape != (n,) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"{name}: expected {n} integer labels, got {y.dtype} {tuple(y.shape)}")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= self.n_classes:
            raise ValueError(f"{name}: labels span [{lo}, {hi}], outside [0, {self.n_classes})")
        return y.to(torch.device(self.device), torch.int64)

    def _check_fitted(self) -> None:
        if getattr(self, "weight_", None) is None:
            raise RuntimeError("this MultiHeadProbe is not fitted yet; call fit() first")
