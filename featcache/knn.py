"""Weighted k-NN classification on L2-normalised cached features (the DINO / DINOv2 k-NN evaluation).

Every row is divided by its L2 norm, so the similarity of a query q and a train row x is their cosine. Each
query's k most similar train rows vote for their labels with weight exp(sim / T), and the classes' summed
votes rank the predictions. The votes are computed as exp((sim - sim_max) / T), with sim_max the query's
best similarity: a positive factor common to all of a query's votes, so the ranking is DINO's and a small T
cannot overflow.

Besides the (k, T) chosen on val, ``fixed_k`` (``--knn-fixed-k``, default 20 at T = 0.07) gives the number DINO
reports: the k-NN top-1 on test with all of train as neighbours at a k fixed in advance, never chosen on val or
test (the record's research number).

A grid of k and T costs one pass over the train features: the k_max = max(k) nearest rows of every query
are found once (tiles of query-block x train-block similarities, keeping a running top-k_max across train
blocks, so the full similarity matrix never exists), then each k takes the first k of them and each T
re-weights them. Classes are ranked by score, ties broken by the smaller class index; a query scores at top-1
when its class ranks first and at top-5 when it ranks within min(5, C).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from featcache.errors import ConfigError
from featcache.rows import Features, check_labels, check_rows, read_rows

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_TEMPERATURES",
    "DINO_K",
    "DINO_TEMPERATURE",
    "KNNClassifier",
    "KNNConfig",
    "run_knn",
    "select_knn",
]

logger = logging.getLogger(__name__)

DEFAULT_KS = (10, 20, 100, 200)  # DINO's reported k
DEFAULT_TEMPERATURES = (0.07,)  # DINO's T
DINO_K, DINO_TEMPERATURE = 20, 0.07  # the k-NN number DINO reports: 20-NN, T = 0.07, on test


@dataclass(frozen=True)
class KNNConfig:
    """The k-NN grid.

    Raises:
        ConfigError: a value is out of range; the message names the command-line option.
    """

    ks: tuple[int, ...] = DEFAULT_KS
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    fixed_k: int | None = DINO_K  # the k of the fixed-k number on test (at DINO_TEMPERATURE); None: none

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(self.ks))
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))
        ks, ts = self.ks, self.temperatures
        for ok, option, value, what in (
            (
                len(ks) > 0 and len(set(ks)) == len(ks) and all(isinstance(k, int) and k > 0 for k in ks),
                "--knn-k",
                ks,
                "one or more distinct positive integers",
            ),
            (
                len(ts) > 0 and len(set(ts)) == len(ts) and all(0 < t < math.inf for t in ts),
                "--knn-temperature",
                ts,
                "one or more distinct positive numbers",
            ),
            (
                self.fixed_k is None or (isinstance(self.fixed_k, int) and self.fixed_k > 0),
                "--knn-fixed-k",
                self.fixed_k,
                "a positive integer (0: none)",
            ),
        ):
            if not ok:
                raise ConfigError(f"{option} must be {what}, got {value!r}")

    @property
    def grid(self) -> tuple[tuple[int, float], ...]:
        """Every (k, T), k ascending then T ascending: the order of :meth:`KNNClassifier.evaluate`'s entries."""
        return tuple((k, t) for k in sorted(self.ks) for t in sorted(self.temperatures))


def select_knn(grid: Sequence[Mapping[str, Any]], key: str = "val_top1") -> int:
    """Index of the grid entry with the best ``key``; ties go to the larger k, then the larger T (smoother votes).

    Args:
        grid: entries with ``"k"``, ``"temperature"`` and ``key``, as :meth:`KNNClassifier.evaluate` gives.
        key: the score to maximise; a validation score, never a test score.
    Returns:
        The index into ``grid``.
    """
    return max(range(len(grid)), key=lambda i: (grid[i][key], grid[i]["k"], grid[i]["temperature"]))


class KNNClassifier:
    """Cosine k-NN over a grid of k and T (estimator style: :meth:`fit` keeps the train rows, nothing else).

    Args:
        config: the (k, T) grid.
        n_features: feature dimension D.
        n_classes: number of classes C.
        device: where similarities are computed; train blocks are moved there, queries held there.
        dtype: dtype of the normalised features and similarities.
        query_rows: queries per similarity tile.
        train_rows: train rows per block (and per tile); each block is read once per :meth:`kneighbors` call.

    Attributes (after :meth:`fit`):
        n_train_: train rows.
    """

    def __init__(
        self,
        config: KNNConfig,
        n_features: int,
        n_classes: int,
        device="cpu",
        dtype=torch.float32,
        query_rows: int = 1024,
        train_rows: int = 8192,
    ):
        if query_rows < 1 or train_rows < 1:
            raise ValueError(f"query_rows and train_rows must be >= 1, got {query_rows}, {train_rows}")
        self.config = config
        self.n_features = n_features
        self.n_classes = n_classes
        self.device = device
        self.dtype = dtype
        self.query_rows = query_rows
        self.train_rows = train_rows

    def fit(self, X: Features, y) -> KNNClassifier:
        """Keep the train features (not copied) and labels.

        Args:
            X: (N, D) float tensor on any device, or a row source.
            y: (N,) integer labels in [0, C).
        Returns:
            self.
        Raises:
            ValueError: shapes or labels do not match, or N < max(k).
            TypeError: features are neither a tensor nor a row source.
        """
        n = check_rows(X, self.n_features, "X")
        if n < max(self.config.ks):
            raise ValueError(f"k = {max(self.config.ks)} needs at least that many train rows; X has {n}")
        self._X, self._y, self.n_train_ = X, self._labels(y, n, "y"), n
        return self

    @torch.no_grad()
    def kneighbors(self, X: Features, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The k most similar train rows of every query, most similar first, in one pass over the train rows.

        Args:
            X: (M, D) queries, a tensor or a row source; normalised and held on ``device``.
            k: neighbours per query (default max(config.ks)).
        Returns:
            (similarities (M, k), train row indices (M, k) int64), on ``device``.
        Raises:
            RuntimeError: not fitted.
            ValueError: k exceeds the train rows.
        """
        self._check_fitted()
        k, dev = k or max(self.config.ks), torch.device(self.device)
        if not 0 < k <= self.n_train_:
            raise ValueError(f"k = {k} must be in [1, {self.n_train_}], the train rows")
        m = check_rows(X, self.n_features, "queries")
        q = torch.cat([self._normalised(X, a, min(a + self.query_rows, m)) for a in range(0, m, self.query_rows)])
        best = torch.full((m, k), -math.inf, dtype=self.dtype, device=dev)
        best_idx = torch.zeros((m, k), dtype=torch.int64, device=dev)
        for ta in range(0, self.n_train_, self.train_rows):
            tb = min(ta + self.train_rows, self.n_train_)
            t = self._normalised(self._X, ta, tb)
            for qa in range(0, m, self.query_rows):
                qb = min(qa + self.query_rows, m)
                sims = q[qa:qb] @ t.T  # (query block, train block): the only similarities that exist at once
                top = sims.topk(min(k, tb - ta), dim=1)
                # Merge with the running best: the k best of (k best so far, this block's k best).
                vals = torch.cat([best[qa:qb], top.values], 1)
                idx = torch.cat([best_idx[qa:qb], top.indices + ta], 1)
                keep = vals.topk(k, dim=1)
                best[qa:qb], best_idx[qa:qb] = keep.values, idx.gather(1, keep.indices)
        return best, best_idx

    @torch.no_grad()
    def evaluate(self, X: Features, y) -> list[dict[str, Any]]:
        """Top-1 and top-5 accuracy (%) of every (k, T) of the grid, from one :meth:`kneighbors` pass.

        Args:
            X: (M, D) queries; y: (M,) integer labels.
        Returns:
            One dict per (k, T) in ``config.grid`` order: ``{"k": int, "temperature": float, "top1": float,
            "top5": float}``.
        Raises:
            RuntimeError: not fitted.
        """
        self._check_fitted()
        y = self._labels(y, check_rows(X, self.n_features, "queries"), "y")
        sims, idx = self.kneighbors(X)
        labels = self._y[idx]  # (M, k_max)
        ks, temps = sorted(self.config.ks), sorted(self.config.temperatures)
        hits = torch.zeros(len(ks), len(temps), 2, dtype=torch.int64, device=sims.device)
        for a in range(0, len(y), self.query_rows):
            s, lab, yb = sims[a : a + self.query_rows], labels[a : a + self.query_rows], y[a : a + self.query_rows]
            shifted = s - s[:, :1]  # <= 0: the largest vote of a query is exp(0) = 1
            for j, temp in enumerate(temps):
                votes = shifted.div(temp).exp_()
                scores = torch.zeros(len(yb), self.n_classes, dtype=votes.dtype, device=votes.device)
                done = 0
                for i, k in enumerate(ks):  # the scores of k are those of the previous k plus the next votes
                    scores.scatter_add_(1, lab[:, done:k], votes[:, done:k])
                    done = k
                    rank = self._rank(scores, yb)
                    hits[i, j, 0] += (rank == 0).sum()
                    hits[i, j, 1] += (rank < min(5, self.n_classes)).sum()
        acc = [[[100.0 * h / len(y) for h in pair] for pair in row] for row in hits.tolist()]  # same on any device
        return [
            {"k": k, "temperature": t, "top1": acc[i][j][0], "top5": acc[i][j][1]}
            for i, k in enumerate(ks)
            for j, t in enumerate(temps)
        ]

    @staticmethod
    def _rank(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Position of each row's true class when classes are sorted by score, ties by class index."""
        true = scores.gather(1, y[:, None])
        lower_index = torch.arange(scores.shape[1], device=scores.device) < y[:, None]
        return (scores > true).sum(1) + ((scores == true) & lower_index).sum(1)

    def _normalised(self, X: Features, a: int, b: int) -> torch.Tensor:
        return F.normalize(read_rows(X, a, b).to(torch.device(self.device), self.dtype), dim=1)

    def _labels(self, y: Any, n: int, name: str) -> torch.Tensor:
        return check_labels(y, n, self.n_classes, self.device, name)

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_train_"):
            raise RuntimeError("this KNNClassifier is not fitted yet; call fit() first")


def run_knn(
    config: KNNConfig,
    splits: Mapping[str, tuple],
    n_features: int,
    n_classes: int,
    device="cpu",
    dtype=torch.float32,
    **blocks: int,
) -> dict[str, Any]:
    """The probe's k-NN protocol: the grid on val with fit as neighbours, (k, T) chosen on val, then test once
    with all of train (fit + val) as neighbours at the chosen (k, T); and, with ``config.fixed_k``, test at that k
    and DINO's T, fixed in advance (DINO's number; capped at the train rows).

    A k larger than the fit rows is capped at their number (the most neighbours val can have); ks that cap to
    the same value are one grid point.

    Args:
        config: the (k, T) grid.
        splits: ``"fit"``, ``"val"``, ``"train"`` and ``"test"`` -> (features, labels).
        n_features, n_classes, device, dtype: as for :class:`KNNClassifier`; ``blocks``: its ``query_rows``,
            ``train_rows``.
    Returns:
        Plain floats and ints: ``{"solver": "knn", "grid": [{"k", "temperature", "val_top1", "val_top5"}],
        "selected": {"k", "temperature", "val_top1", "val_top5", "test_top1", "test_top5"},
        "timings": {"val_s", "test_s"}}``; ``k`` is the k used, and a capped point also has ``"k_requested"``:
        the ks asked for that were capped to it. With ``fixed_k``, also ``"fixed": {"k", "temperature",
        "test_top1", "test_top5"}`` (and ``"k_requested"`` when capped at the train rows).
    """
    t0 = time.perf_counter()
    n_fit = len(splits["fit"][0])
    used = {k: min(k, n_fit) for k in config.ks}
    capped = replace(config, ks=tuple(sorted(set(used.values()))))
    knn = KNNClassifier(capped, n_features, n_classes, device, dtype, **blocks).fit(*splits["fit"])
    grid = []
    for e in knn.evaluate(*splits["val"]):
        grid.append({"k": e["k"], "temperature": e["temperature"], "val_top1": e["top1"], "val_top5": e["top5"]})
        asked = sorted(k for k, u in used.items() if u == e["k"] != k)
        if asked:
            grid[-1]["k_requested"] = asked
    chosen = grid[select_knn(grid)]
    t1 = time.perf_counter()
    one = replace(config, ks=(chosen["k"],), temperatures=(chosen["temperature"],))
    final = KNNClassifier(one, n_features, n_classes, device, dtype, **blocks).fit(*splits["train"])
    (test,) = final.evaluate(*splits["test"])
    selected = {**chosen, "test_top1": test["top1"], "test_top5": test["top5"]}
    logger.info("knn selected %s", selected)
    out = {"solver": "knn", "grid": grid, "selected": selected}
    if config.fixed_k is not None:
        out["fixed"] = _fixed(config, splits, selected, n_features, n_classes, device, dtype, blocks)
    return out | {"timings": {"val_s": t1 - t0, "test_s": time.perf_counter() - t1}}


def _fixed(config, splits, selected, n_features, n_classes, device, dtype, blocks) -> dict[str, Any]:
    """Test top-1 and top-5 at ``config.fixed_k`` (capped at the train rows) and DINO's T, train as neighbours."""
    k = min(config.fixed_k, len(splits["train"][0]))
    out: dict[str, Any] = {"k": k, "temperature": DINO_TEMPERATURE}
    if (k, DINO_TEMPERATURE) == (selected["k"], selected["temperature"]):  # the selection's own pass
        out |= {"test_top1": selected["test_top1"], "test_top5": selected["test_top5"]}
    else:
        one = replace(config, ks=(k,), temperatures=(DINO_TEMPERATURE,))
        (test,) = (
            KNNClassifier(one, n_features, n_classes, device, dtype, **blocks)
            .fit(*splits["train"])
            .evaluate(*splits["test"])
        )
        out |= {"test_top1": test["top1"], "test_top5": test["top5"]}
    return out | ({"k_requested": config.fixed_k} if k < config.fixed_k else {})
