"""Linear heads on cached features: a whole weight-decay grid trained in one pass over the data.

The protocol is the seed's (REFERENCE.md, "The seed's linear-probe protocol"): BatchNorm1d(D, affine) then
Linear(D, C), SGD with Nesterov momentum, the lr cut at fixed epochs, weight decay on the Linear only.
A grid of H weight decays (optionally x learning rates) is trained as H heads that see the same batches.
BatchNorm's normalisation depends only on the batch, so it is computed once and shared; each head keeps its own
affine and Linear, and the step computes every head's gradients in closed form (:mod:`featcache.heads_step`), so
head h ends where a solo run with weight decay wd_h ends (tests/test_heads.py checks this, and checks a head
against torch.nn + torch.optim.SGD + MultiStepLR). On CUDA the step is captured in a CUDA graph
(:mod:`featcache.heads_graph`). Scoring takes one product per head (:class:`featcache.linear_head.LinearHead`), the
arithmetic a saved head of it scores with: one product of all heads rounds some logits otherwise, and a near tie
can flip.

:class:`PackedProbe` trains several probes (column groups of one feature matrix: the union of their stores) in
one pass, each ending where it would alone.

This module is the estimator and the epoch loop: which rows form each batch is the feed's (:mod:`featcache.feed`),
the arithmetic is :mod:`featcache.heads_step`'s; it never builds or runs a backbone.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featcache.errors import ConfigError, FeatcacheError, unknown_name
from featcache.feed_batches import Feed, as_feed
from featcache.heads_graph import cuda_capture
from featcache.heads_step import HeadTrainer
from featcache.linear_head import LinearHead
from featcache.rows import EpochFeatures, Features, RowSource, check_labels

# RowSource, Features and EpochFeatures live in featcache.rows; named here too, where they were first defined.
__all__ = ["HEADS", "EpochFeatures", "Features", "HeadConfig", "MultiHeadProbe", "NonFiniteLossError", "PackedProbe",
           "RowSource"]  # fmt: skip

logger = logging.getLogger(__name__)

HEADS = ("bn-linear", "linear")


class NonFiniteLossError(FeatcacheError):
    """A head's training loss became NaN or Inf: its features hold NaN/Inf, or its learning rate diverged.

    ``group``: the packed probe's group the heads belong to (None when not packed).
    """

    def __init__(self, heads: list[int], epoch: int, group: int | None = None):
        self.heads, self.epoch, self.group = heads, epoch, group
        where = "" if group is None else f" of packed probe {group}"
        super().__init__(f"training loss of head(s) {heads}{where} became non-finite at epoch {epoch}")


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


class MultiHeadProbe:
    """H = len(config.grid) linear heads fitted together on cached features (estimator style).

    Args:
        config: the heads' hyperparameters.
        n_features: feature dimension D.
        n_classes: number of classes C.
        device: where the heads live and train; features are moved there batch by batch.
        dtype: dtype of the parameters and of the batches (features of any float dtype are cast).
        graphs: capture the training step in a CUDA graph and replay it: None (on CUDA), True, False, or a capture
            function (:data:`featcache.heads_graph.Capture`; tests pass a stand-in on the CPU); the same arithmetic
            either way (:mod:`featcache.heads_graph`).

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

    def __init__(
        self, config: HeadConfig, n_features: int, n_classes: int, device="cpu", dtype=torch.float, graphs=None
    ):
        self.config = config
        self.n_features = n_features
        self.n_classes = n_classes
        self.device = device
        self.dtype = dtype
        self.graphs = graphs

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
        start = time.perf_counter()

        def hook(trainer: HeadTrainer, epoch: int) -> None:
            self._bind(trainer)  # views of the trainer's live parameters: scoring_heads copies them
            on_epoch(self, epoch)

        trainer, histories = _fit(self, [None], X, y, eval_sets, hook if on_epoch is not None else None)
        self._adopt(trainer, histories[0], time.perf_counter() - start)
        return self

    def _adopt(self, trainer: HeadTrainer, history: list[dict[str, Any]], seconds: float) -> None:
        """Take a fitted single-group trainer's parameters and statistics as this probe's."""
        self._bind(trainer)
        self.history_, self.fit_epochs_, self.seconds_ = history, self.config.epochs, seconds
        logger.info("fitted %d head(s), %d epochs, in %.2f s", self.n_heads, self.config.epochs, seconds)

    def _bind(self, trainer: HeadTrainer) -> None:
        self._trainer = trainer
        self.weight_, self.bias_, self.gamma_, self.beta_ = trainer.tensors(0)
        self.running_mean_, self.running_var_ = trainer.running_mean, trainer.running_var
        self.num_batches_tracked_ = trainer.steps

    def scoring_heads(self, blocks: bool = False) -> list[LinearHead]:
        """Each head as it scores, in fresh memory (:meth:`featcache.heads_step.HeadTrainer.scoring_heads`;
        ``blocks``: with what per-model scores need): a head saved from these scores the same bits. Raises
        RuntimeError unless fitted."""
        self._check_fitted()
        return self._trainer.scoring_heads(0, blocks=blocks)

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
        self._check_rows(X, "X")
        return self._trainer.logits(X)[0]

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
        return self._trainer.scores(X, self._check_labels(y, self._check_rows(X, "X"), "y"))[0]

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

    def _check_rows(self, X: Any, name: str) -> int:
        return _check_rows(X, self.n_features, name)

    def _check_labels(self, y: Any, n: int, name: str) -> torch.Tensor:
        return check_labels(y, n, self.n_classes, self.device, name)

    def _check_fitted(self) -> None:
        if getattr(self, "weight_", None) is None:
            raise RuntimeError("this MultiHeadProbe is not fitted yet; call fit() first")


class PackedProbe:
    """Several probes' heads trained in one pass over features holding all their columns (packed probes).

    Each group is one probe: the columns of the features it reads, in its own order (its stores among the union's).
    All groups share ``config`` (so the same batches, in the same order) and BatchNorm's statistics, which are per
    column; so group g ends where ``MultiHeadProbe(config, len(groups[g]), ...)`` fitted alone on ``X[:, groups[g]]``
    ends (up to float rounding), and :attr:`probes_` holds exactly that.

    Args:
        config: the heads' hyperparameters, every group's.
        n_features: columns of the features fed (the union).
        n_classes, device, dtype, graphs: as :class:`MultiHeadProbe`.
        groups: each probe's columns of the features, in its order.

    Attributes (after :meth:`fit`):
        probes_: one fitted :class:`MultiHeadProbe` per group, on the group's columns.
        seconds_: wall time of the one pass, evaluations included.
    """

    def __init__(self, config: HeadConfig, n_features: int, n_classes: int, groups: Sequence[Sequence[int]],
                 device="cpu", dtype=torch.float, graphs=None):  # fmt: skip
        self.config, self.n_features, self.n_classes = config, n_features, n_classes
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups]
        self.device, self.dtype, self.graphs = device, dtype, graphs
        for g, cols in enumerate(self.groups):
            if len(cols) == 0 or cols.min() < 0 or cols.max() >= n_features or len(set(cols.tolist())) < len(cols):
                raise ValueError(f"group {g}: columns must be distinct, in [0, {n_features}), and at least one")

    def fit(
        self,
        X: Feed | Features | EpochFeatures,
        y,
        eval_sets: Mapping[str, tuple] | None = None,
        on_epoch: Callable[[PackedProbe, int], None] | None = None,
    ) -> PackedProbe:
        """Train every group's heads in one pass per epoch; score each evaluation set once per epoch for all.

        Args and Raises: as :meth:`MultiHeadProbe.fit`, the features holding ``n_features`` columns;
        :class:`NonFiniteLossError` names the group too. ``on_epoch(self, e)`` runs after epoch e (1-based) is
        scored, while :meth:`scoring_heads` gives each group's heads as they scored it.
        Returns:
            self, with :attr:`probes_` fitted.
        """
        start = time.perf_counter()

        def hook(trainer: HeadTrainer, epoch: int) -> None:
            self._trainer = trainer
            on_epoch(self, epoch)

        trainer, histories = _fit(self, self.groups, X, y, eval_sets, hook if on_epoch is not None else None)
        self._trainer = None  # the packed trainer is not kept: probes_ hold copies of each group
        self.seconds_ = time.perf_counter() - start
        self.probes_ = []
        for g, cols in enumerate(self.groups):
            probe = MultiHeadProbe(self.config, len(cols), self.n_classes, self.device, self.dtype, self.graphs)
            probe._adopt(trainer.group(g), histories[g], self.seconds_)
            self.probes_.append(probe)
        return self

    def scoring_heads(self, g: int, blocks: bool = False) -> list[LinearHead]:
        """Group g's heads as they score now, in fresh memory (as :meth:`MultiHeadProbe.scoring_heads`): only
        from an ``on_epoch`` hook of :meth:`fit`; after it, :attr:`probes_` hold each group's last heads."""
        if getattr(self, "_trainer", None) is None:
            raise RuntimeError("PackedProbe.scoring_heads is for an on_epoch hook of fit(); after it, use probes_")
        return self._trainer.scoring_heads(g, blocks=blocks)


def _fit(
    est, groups: list, X, y, eval_sets: Mapping[str, tuple] | None, on_epoch: Callable | None = None
) -> tuple[HeadTrainer, list[list[dict]]]:
    """Fit the heads of ``groups`` on ``est``'s configuration: (the trainer, each group's history);
    ``on_epoch(trainer, e)`` after epoch e (1-based) is scored."""
    cfg, dev = est.config, torch.device(est.device)
    if not isinstance(X, (Feed, EpochFeatures)):
        _check_rows(X, est.n_features, "X")
    feed = as_feed(X)
    n = len(feed)
    y = check_labels(y, n, est.n_classes, dev, "y")
    if n < 2:
        raise ValueError(f"X has {n} row(s); a BatchNorm head needs at least 2 training rows")
    evals = {}
    for name, (Xe, ye) in (eval_sets or {}).items():
        evals[name] = (Xe, check_labels(ye, _check_rows(Xe, est.n_features, name), est.n_classes, dev, name))
    capture = est.graphs if callable(est.graphs) else None
    if est.graphs in (None, True) and dev.type == "cuda":
        capture = cuda_capture
    trainer = HeadTrainer(cfg, est.n_features, est.n_classes, groups, dev, est.dtype, capture,
                          rows=min(n, cfg.batch_size))  # fmt: skip
    head_lrs = [lr for lr, _ in cfg.grid] if cfg.lrs is not None and len(cfg.lrs) > 1 else None
    base_lr = cfg.lrs[0] if cfg.lrs is not None else cfg.lr
    histories: list[list[dict[str, Any]]] = [[] for _ in groups]
    for epoch in range(cfg.epochs):
        factor = cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), epoch)
        # Per head, as a float would give it: lr_h * gamma^k rounded once, then cast.
        lr: float | list[float] = base_lr * factor if head_lrs is None else [h_lr * factor for h_lr in head_lrs]
        trainer.set_lr([lr] if head_lrs is None else lr)
        seen = trainer.fit_epoch(feed, epoch, y, first=epoch == 0)
        losses = [(loss / seen).tolist() for loss in trainer.take_losses()]  # one read of the device per epoch
        for g, loss in enumerate(losses):
            bad = [h for h, v in enumerate(loss) if not math.isfinite(v)]
            if bad:  # its accuracy would be chance level: never report it as a result
                raise NonFiniteLossError(bad, epoch + 1, group=g if len(groups) > 1 else None)
        records = [{"epoch": epoch + 1, "lr": lr, "train_loss": loss} for loss in losses]
        for name, (Xe, ye) in evals.items():
            for record, acc in zip(records, trainer.scores(Xe, ye), strict=True):
                record[f"{name}_top1"], record[f"{name}_top5"] = acc["top1"], acc["top5"]
        for history, record in zip(histories, records, strict=True):
            history.append(record)
        logger.info("epoch %d/%d %s", epoch + 1, cfg.epochs, records if len(records) > 1 else records[0])
        if on_epoch is not None:
            on_epoch(trainer, epoch + 1)
    trainer.finish()
    return trainer, histories


def _check_rows(X: Any, n_features: int, name: str) -> int:
    if isinstance(X, torch.Tensor):
        if X.ndim != 2 or X.shape[1] != n_features or not X.is_floating_point():
            raise ValueError(f"{name}: need float features of shape (N, {n_features}); got {X.dtype} {tuple(X.shape)}")
    elif not isinstance(X, RowSource):
        raise TypeError(f"{name}: expected a (N, D) tensor or a row source with take(), got {type(X).__name__}")
    if len(X) == 0:
        raise ValueError(f"{name} has no rows")
    return len(X)
