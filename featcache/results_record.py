"""The typed record every solver writes, and its key: what makes two probes the same experiment."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .records import Record

if TYPE_CHECKING:
    from .store import Provenance

__all__ = [
    "SCHEMA",
    "StoreUsed",
    "GridPoint",
    "Selection",
    "ResearchNumber",
    "ViewsUsed",
    "TrainSubset",
    "ProbeRecord",
    "BlockScore",
    "EvaluationRecord",
    "probe_key",
    "record_key",
]

# 1: featcache 0.1's dicts (weight_decay keys, "splits" and "in_memory"), upgraded on reading
# 2: typed records; the key left out how the stores' features were made
# 3: each store's layer, pool, dtype, precision and transform recorded, and in the key with the views' seed
# 4: each store's fidelity recorded (featcache.fidelity); a strict store's part of the key says so
SCHEMA = 4


@dataclass(frozen=True)
class StoreUsed(Record):
    """A store a probe read, and what made its features (the part of its provenance the key holds).

    Records of schema 2 and older lack ``layer`` ... ``transform`` (None), so their keys differ from today's.
    """

    name: str
    path: str
    checkpoint: dict[str, Any]  # the store's CheckpointRef: name, arch, sha256, ...
    dim: int
    layer: str | None = None
    pool: str | None = None
    dtype: str | None = None
    precision: str | None = None
    transform: dict[str, Any] | None = None  # the evaluation preprocessing's named parameters
    fidelity: str | None = None  # strict or fast (featcache.fidelity); None in records of schema 3 and older

    @classmethod
    def of(cls, name: str, path: Any, prov: Provenance, dim: int) -> StoreUsed:
        """The entry of a store ``name`` at ``path`` with provenance ``prov``, contributing ``dim`` features."""
        return cls(name, str(path), prov.checkpoint.to_dict(), dim, prov.layer, prov.pool, prov.dtype,
                   prov.precision, dict(prov.transform), prov.fidelity)  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """The store's part of the key: the checkpoint's content and how its features were extracted.

        A strict store's says so: its features and a fast store's of the same dtype and precision differ (PIL or
        device resize, compiled or not), and a strict sweep must not take the other's result. A fast store's
        part is as before, so records made before fidelity was recorded keep their keys.
        """
        out = {
            "checkpoint": self.checkpoint.get("sha256", self.name),
            "layer": self.layer,
            "pool": self.pool,
            "dtype": self.dtype,
            "precision": self.precision,
            "transform": self.transform,
        }
        return out | ({"fidelity": "strict"} if self.fidelity == "strict" else {})


@dataclass(frozen=True)
class GridPoint(Record):
    """One head of the grid (SGD: lr and weight decay; L-BFGS: strength; k-NN: k and temperature)."""

    params: dict[str, float]
    val_top1: float
    # test accuracy of this point's final fit at its val-selected epoch (SGD); for solvers that read test once,
    # only the selected point's
    test_top1: float | None = None
    val_epoch: int | None = None  # SGD: the epoch val selected for this point
    test_top5: float | None = None  # None with fewer than 6 classes
    best_test_top1: float | None = None  # SGD: best test accuracy over epochs (selected on test)
    extra: dict[str, Any] = field(default_factory=dict)  # solver details (iterations, ...)


@dataclass(frozen=True)
class Selection(Record):
    params: dict[str, float]
    val_top1: float
    test_top1: float
    method: str
    epoch: int | None = None
    test_top5: float | None = None


@dataclass(frozen=True)
class ResearchNumber(Record):
    """The number the research protocol reports: SGD's best test accuracy over epochs and grid (the seed's,
    selected on test); k-NN's test accuracy at a k fixed in advance (DINO's 20-NN; ``epoch`` None)."""

    test_top1: float
    params: dict[str, float]
    epoch: int | None
    note: str


@dataclass(frozen=True)
class ViewsUsed(Record):
    count: int  # augmented views the heads trained on; 0: centre-crop features
    seed: int | None = None
    augment: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSubset(Record):
    """The research low-shot subset a probe trained on (``--train-fraction``, :mod:`featcache.lowshot`)."""

    percent: float
    sampler: str  # cifar-permutation | seeded-shuffle
    seed: int | None  # the seeded shuffle's (the research --seed); None for CIFAR's fixed permutation
    rows: int  # usable train rows in the subset, val included

    def identity(self) -> dict[str, Any]:
        """Its part of the probe key: which subset (its row count follows from the stores)."""
        return {"percent": self.percent, "sampler": self.sampler, "seed": self.seed}


@dataclass(frozen=True)
class ProbeRecord(Record):
    id: str
    timestamp: str
    dataset: str
    features: str  # cat<k>
    stores: tuple[StoreUsed, ...]
    feature_dim: int
    train_split: str
    test_split: str
    rows: dict[str, int]  # fit, val, train, test
    preset: str
    solver: str
    hyperparameters: dict[str, Any]
    heads: tuple[GridPoint, ...]
    selected: Selection
    tag: str = ""
    transform: str | None = None
    precision: str | None = None
    views: ViewsUsed = field(default_factory=lambda: ViewsUsed(0))
    train_subset: TrainSubset | None = None  # None: all of train
    research: ResearchNumber | None = None
    notes: tuple[str, ...] = ()  # warnings the probe raised (classes missing from a split, ...)
    timings: dict[str, float] = field(default_factory=dict)
    device: str = ""
    memory: str = ""  # resident | per-epoch | streamed
    versions: dict[str, str] = field(default_factory=dict)
    schema: int = SCHEMA

    @property
    def key(self) -> str:
        """What makes two probes the same experiment (see :func:`record_key`); sweeps look results up by it."""
        return record_key(
            dataset=self.dataset,
            stores=self.stores,
            train_split=self.train_split,
            test_split=self.test_split,
            preset=self.preset,
            solver=self.solver,
            hyperparameters=self.hyperparameters,
            views=self.views,
            train_subset=self.train_subset.identity() if self.train_subset else None,
        )


@dataclass(frozen=True)
class BlockScore(Record):
    """The head scored on one store's block of the features alone (the research ``cat_validate_network``)."""

    store: str
    top1: float
    top5: float | None = None


@dataclass(frozen=True)
class EvaluationRecord(Record):
    """A saved head scored on a split of some stores (``featcache evaluate``, ``probe --eval``).

    ``head_key`` and ``head_id`` are the key and id of the probe record the head comes from; ``classes`` the classes
    scored and ``class_map`` how the split's labels map to the head's (``same``, ``by name``, ``class_subset``);
    ``per_model`` the head on each store's block alone, when asked for.
    """

    id: str
    timestamp: str
    dataset: str
    split: str
    stores: tuple[StoreUsed, ...]
    rows: int
    head: str  # the head file; "" when scored right after its probe without one
    head_key: str
    head_id: str
    head_dataset: str
    features: str  # cat<k>
    solver: str
    top1: float
    top5: float | None = None
    classes: int = 0
    class_map: str = "same"
    per_model: tuple[BlockScore, ...] = ()
    tag: str = ""
    notes: tuple[str, ...] = ()
    device: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    kind: str = "evaluation"  # how the results log tells it from a ProbeRecord
    schema: int = SCHEMA


def probe_key(**what: Any) -> str:
    """A stable hash of keyword values (JSON with sorted keys): 16 hex digits."""
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record_key(
    *,
    dataset: str,
    stores: Sequence[StoreUsed],
    train_split: str,
    test_split: str | None,
    preset: str,
    solver: str,
    hyperparameters: dict[str, Any],
    views: ViewsUsed,
    train_subset: dict[str, Any] | None = None,
) -> str:
    """The key of a probe: its stores in order (checkpoint hash, layer, pool, dtype, precision, transform), the
    dataset and splits, the preset, solver and hyperparameters, the views trained on (count, seed, crops), and the
    low-shot subset of train when there is one (:meth:`TrainSubset.identity`; absent, the key is as before).

    :attr:`ProbeRecord.key` and :func:`featcache.probe.probe_key_for` (the key before probing) both call this.
    """
    subset = {"train_subset": train_subset} if train_subset is not None else {}
    return probe_key(
        **subset,
        dataset=dataset,
        stores=[s.identity() for s in stores],
        train_split=train_split,
        test_split=test_split,
        preset=preset,
        solver=solver,
        hyperparameters=hyperparameters,
        views={"count": views.count, "seed": views.seed, "augment": views.augment},
    )
