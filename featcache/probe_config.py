"""The probe's configuration: :class:`ProbeConfig` and its one builder, :func:`config_from`.

The CLI, sweeps and Python callers build a probe the same way: ``config_from(reg, paths, stores=..., ...)``
resolves the stores (opening each once), the probe preset and its head grid with the options given, the solver's
configuration and the views to train on, and returns a frozen :class:`ProbeConfig` for
:func:`featcache.probe.run_probe`. :func:`probe_key_for` predicts the record's key with the same split and view
rules (:func:`default_splits`, :func:`shared_views`) as the run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoints import check_store_checkpoint
from .choices import IN_MEMORY, SOLVERS
from .config import DEFAULT_PRESET, Paths, ProbeOptions, ProbePreset, Registry
from .errors import ConfigError, unknown_name
from .evaluate_config import EvalTarget, eval_targets, resolve_target
from .head_layout import FeatureBlock
from .heads import HeadConfig
from .knn import KNNConfig
from .locations import location
from .logreg import LogRegConfig
from .lowshot import TrainFraction, describe
from .records import document_keys
from .results import StoreUsed, ViewsUsed, record_key
from .saved_head import check_head_path
from .solvers import SolverConfig
from .store import Store, resolve_stores

__all__ = [
    "HEAD_OPTIONS",
    "SOLVER_OPTIONS",
    "ProbeConfig",
    "config_from",
    "default_splits",
    "heads_from_preset",
    "probe_key_for",
    "shared_views",
    "solver_config",
    "strength_range",
]


@dataclass(frozen=True)
class ProbeConfig:
    """One ``featcache probe`` call.

    ``views``: augmented views to train on (None: every view the stores share; 0: centre crops only).
    ``max_memory``: bytes of RAM the features may take (None: MEMORY_SHARE of what is available).
    ``in_memory``: ``auto`` plans by the budget; ``yes`` forces resident, ``no`` streaming.
    ``opened``: ``stores`` already opened (by :func:`config_from`), so that a probe opens each store once.
    ``train_fraction``: train on the research low-shot subset of train (:mod:`featcache.lowshot`); None: all of it.
    ``save_head``: where to write the selected head (``--save-head``); ``evaluate``: what to score it on after
    training (``--eval``), one evaluation record each. Neither exists for k-NN.
    """

    stores: tuple[Path, ...]
    heads: HeadConfig
    val_fraction: float = ProbePreset.val_fraction
    device: str = ProbeOptions.device
    allow_transform_mix: bool = False
    train_split: str | None = None  # default: "train", else the stores' first split
    test_split: str | None = None  # default: "test", else "val"
    views: int | None = None
    max_memory: int | None = ProbeOptions.max_memory
    in_memory: str = ProbeOptions.in_memory
    preset: str = DEFAULT_PRESET
    tag: str = ""
    dataset: str | None = None  # what the caller believes the stores hold (e.g. --dataset); checked
    allow_same_split: bool = False
    solver: SolverConfig | None = None  # None: the SGD heads of ``heads``; else L-BFGS or k-NN on the same splits
    train_fraction: TrainFraction | None = None
    save_head: Path | None = None
    evaluate: tuple[EvalTarget, ...] = ()
    opened: tuple[Store, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.in_memory not in IN_MEMORY:
            raise ConfigError(f"--in-memory {self.in_memory!r} is not one of {', '.join(IN_MEMORY)}")
        if not self.stores:
            raise ConfigError("--stores is empty; name at least one store")
        if self.views is not None and self.views < 0:
            raise ConfigError(f"--views must be a count >= 0 or 'none', got {self.views}")
        if self.max_memory is not None and self.max_memory <= 0:
            raise ConfigError(f"--max-memory must be a positive size, got {self.max_memory}")
        if self.solver is not None and self.views:
            raise ConfigError("--solver lbfgs and knn fit the evaluation view only: pass --views none")
        if isinstance(self.solver, KNNConfig) and (self.save_head is not None or self.evaluate):
            option = "--save-head" if self.save_head is not None else "--eval"
            raise ConfigError(f"{option}: k-NN has no head (it votes with the train features themselves); use "
                              "--solver sgd or lbfgs to save or evaluate a head")  # fmt: skip
        if self.save_head is not None:
            check_head_path(self.save_head)  # refused now, not after the training
        if self.opened is not None and [s.path for s in self.opened] != [location(p) for p in self.stores]:
            raise ValueError("ProbeConfig.opened must be the stores of ProbeConfig.stores, in order")

    @property
    def solver_name(self) -> str:
        return "sgd" if self.solver is None else "lbfgs" if isinstance(self.solver, LogRegConfig) else "knn"


def heads_from_preset(
    preset: dict | ProbePreset, weight_decays: Sequence[float] | None = None, **overrides
) -> tuple[HeadConfig, float]:
    """A probe preset plus the options given (None: keep the preset's) -> (HeadConfig, val_fraction).

    ``weight_decays`` (or the preset's ``weight_decays``) is the grid; ``views`` is read by the caller.

    Raises:
        ConfigError: the preset has keys a preset does not know, a bad value, or no weight-decay grid.
    """
    if not isinstance(preset, ProbePreset):
        known = document_keys(ProbePreset)
        unknown = sorted(set(preset) - set(known))
        if unknown:
            raise ConfigError(f"probe preset has unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
        preset = ProbePreset.from_dict(preset, "probe preset", strict=True)
    p = preset.merged(weight_decays=tuple(weight_decays) if weight_decays is not None else None, **overrides)
    return HeadConfig(**p.head_fields()), p.val_fraction


def solver_config(
    solver: str,
    *,
    lbfgs_strengths: Sequence[float] | None = None,
    lbfgs_range: tuple[float, float, int] | None = None,
    lbfgs_tol: float | None = None,
    lbfgs_max_iter: int | None = None,
    standardize: str | None = None,
    knn_k: Sequence[int] | None = None,
    knn_temperature: Sequence[float] | None = None,
    knn_fixed_k: int | None = None,
) -> SolverConfig | None:
    """The L-BFGS or k-NN configuration from its options (None: the solver's default); None for sgd.

    ``lbfgs_range`` (MIN, MAX, N): N strengths log-spaced from MAX down to MIN (:func:`strength_range`);
    ``standardize``: ``on`` or ``off``; ``knn_fixed_k``: 0 for no fixed-k number.

    Raises:
        ConfigError: an unknown solver, an option of another solver, both strength options, or an option value
            out of range (the option is named).
    """
    if solver not in SOLVERS:
        raise unknown_name("solver", solver, SOLVERS, "choose one with --solver")
    given = {"lbfgs_strengths": lbfgs_strengths, "lbfgs_range": lbfgs_range, "lbfgs_tol": lbfgs_tol,
             "lbfgs_max_iter": lbfgs_max_iter, "standardize": standardize, "knn_k": knn_k,
             "knn_temperature": knn_temperature, "knn_fixed_k": knn_fixed_k}  # fmt: skip
    for name, value in given.items():
        owner = "knn" if name.startswith("knn") else "lbfgs"
        if value is not None and owner != solver:  # an option that would be ignored silently
            raise ConfigError(f"--{name.replace('_', '-')} applies to --solver {owner}, not {solver}; drop it")
    if solver == "lbfgs":
        if lbfgs_strengths is not None and lbfgs_range is not None:
            raise ConfigError("--lbfgs-strengths and --lbfgs-range both give the strengths; pass one")
        if standardize not in (None, "on", "off"):
            raise ConfigError(f"--standardize must be on or off, got {standardize!r}")
        strengths = strength_range(*lbfgs_range) if lbfgs_range is not None else lbfgs_strengths
        given = {"strengths": strengths, "tol": lbfgs_tol, "max_iter": lbfgs_max_iter,
                 "standardize": None if standardize is None else standardize == "on"}  # fmt: skip
        return LogRegConfig(**{k: v for k, v in given.items() if v is not None})
    if solver == "knn":
        fixed = {} if knn_fixed_k is None else {"fixed_k": knn_fixed_k or None}  # 0: no fixed-k number
        given = {"ks": knn_k, "temperatures": knn_temperature}
        return KNNConfig(**{k: v for k, v in given.items() if v is not None}, **fixed)
    return None


# Each strength is a fit of its own on the path: CLIP swept 96, so a few hundred is a typo (1000000), not a grid.
MAX_RANGE = 200


def strength_range(low: float, high: float, count: int) -> tuple[float, ...]:
    """``count`` L2 strengths spaced evenly on a log scale from ``high`` down to ``low``, both included
    (``--lbfgs-range MIN MAX N``; CLIP swept its C over 1e-6 .. 1e6 in 96 steps, and lambda = 1 / (C n)).

    Raises:
        ConfigError: not 0 < low < high (finite) with 2 <= count <= :data:`MAX_RANGE`.
    """
    if not (isinstance(count, int) and 2 <= count <= MAX_RANGE and 0 < low < high < math.inf):
        raise ConfigError(
            f"--lbfgs-range {low:g} {high:g} {count}: give MIN MAX N with 0 < MIN < MAX and N >= 2 log-spaced "
            f"strengths (at most {MAX_RANGE}), e.g. --lbfgs-range 1e-6 1 13 (one strength: --lbfgs-strengths)"
        )
    step = math.log(low / high) / (count - 1)
    return tuple(high * math.exp(k * step) for k in range(count - 1)) + (float(low),)


def default_splits(splits: Sequence[str], train: str | None, test: str | None) -> tuple[str | None, str | None]:
    """The splits a probe trains and reports on: those asked for, else ``train`` (or the first split) and ``test``
    (or ``val``); None where the store has none to offer."""
    train = train or ("train" if "train" in splits else next(iter(splits), None))
    test = test or next((s for s in ("test", "val") if s in splits), None)
    return train, test


def shared_views(stores: Sequence[Store], split: str | None) -> int:
    """The augmented views every store holds of ``split`` (0 when one lacks the split)."""
    return min(s.split_meta(split).n_views if split in s.splits else 0 for s in stores)


HEAD_OPTIONS = ("epochs", "batch_size", "head", "seed", "val_fraction")  # override the preset's (None: keep)
SOLVER_OPTIONS = ("lbfgs_strengths", "lbfgs_range", "lbfgs_tol", "lbfgs_max_iter", "standardize", "knn_k",
                  "knn_temperature", "knn_fixed_k")  # fmt: skip


def config_from(
    reg: Registry,
    paths: Paths,
    *,
    stores: str | Sequence[str | os.PathLike],
    dataset: str | None = None,
    preset: str | None = None,
    solver: str = SOLVERS[0],
    views: int | None = None,
    weight_decays: Sequence[float] | None = None,
    lr: float | Sequence[float] | None = None,
    read_stores: bool = True,
    save_head: str | os.PathLike | None = None,
    evaluate: str | Sequence[str] | None = None,
    **options,
) -> ProbeConfig:
    """The probe of these options, as ``featcache probe`` runs it.

    Args:
        reg, paths: the registries and roots.
        stores: a ``--stores`` value (store names under ``<cache>/<dataset>/``, set names, store paths; names need
            ``dataset``), or the store paths.
        dataset: the dataset of named stores, checked against what the stores hold.
        preset: the probe preset (default: the dataset's, read from the first store when not given).
        solver: ``sgd`` (the preset's heads), ``lbfgs`` or ``knn`` (on the evaluation view).
        views: augmented views to train on; None: the preset's count, at most what every store holds.
        weight_decays, lr: the grid (None: the preset's); several learning rates make an lr grid.
        read_stores: open each store once (kept on the config, so the probe does not open it again) and refuse one
            whose checkpoint file changed; False plans a probe of stores still to extract (a sweep): nothing is
            read, the splits stay as given and ``views`` defaults to the preset's.
        save_head: where to write the selected head (safetensors).
        evaluate: datasets to score the selected head on after training (``D1,D2`` or a list; ``D@split`` for
            another split than the dataset's test split), on the stores of the same names under ``<cache>/<D>/``;
            with ``read_stores`` they are checked now, before any training.
        options: :data:`HEAD_OPTIONS` (None: the preset's), :data:`SOLVER_OPTIONS` (None: the solver's default),
            and the other :class:`ProbeConfig` fields (``device``, ``train_split``, ``tag``, ...); ``train_fraction``
            may be given as text (``"10%"``, ``"10%@7"``).

    Returns:
        The configuration, splits and views resolved.

    Raises:
        ConfigError: unknown names (preset, set, store names without a dataset), bad values (the option is named).
        StoreError, StoreMismatchError: a store that does not exist or was extracted from an older checkpoint file.
    """
    if dataset is not None and dataset.startswith("imagefolder:"):  # named as extract names it: its absolute path
        dataset = reg.dataset(dataset).name
    if isinstance(stores, str):
        store_paths = resolve_stores(stores, dataset, paths.cache, reg.sets)
    else:
        store_paths = [location(p, "store path") for p in stores]  # a path, or an object-store URL
    opened: list[Store] = []
    for p in store_paths if read_stores else ():  # features of the checkpoint file as it is now, or a refusal
        opened.append(Store(p))
        check_store_checkpoint(p, opened[-1].provenance.checkpoint)
    name = preset or reg.preset_for(dataset or (opened[0].provenance.dataset.name if opened else ""))
    chosen = reg.preset(name).merged(**{k: options.pop(k, None) for k in HEAD_OPTIONS})
    lrs = tuple(lr) if isinstance(lr, Sequence) else () if lr is None else (lr,)
    heads, val_fraction = heads_from_preset(
        chosen, weight_decays, lr=lrs[0] if len(lrs) == 1 else None, lrs=lrs if len(lrs) > 1 else None
    )
    solver_cfg = solver_config(solver, **{k: options.pop(k, None) for k in SOLVER_OPTIONS})
    if isinstance(options.get("train_fraction"), str):
        options["train_fraction"] = TrainFraction.parse(options["train_fraction"])
    if opened:
        train, test = default_splits(opened[0].splits, options.get("train_split"), options.get("test_split"))
        options.update(train_split=train, test_split=test)
    if solver_cfg is not None:
        views = 0  # lbfgs and knn fit the evaluation view
    elif views is None:  # the preset's count, capped by what every store holds
        views = min(chosen.views, shared_views(opened, options["train_split"])) if opened else chosen.views
    targets = eval_targets(reg, paths, evaluate, [p.name.removesuffix(".zarr") for p in store_paths])
    if options.get("allow_transform_mix"):  # mixing preprocessing on purpose covers the stores scored after
        targets = tuple(dataclasses.replace(t, allow_transform_mix=True) for t in targets)
    if targets and opened:  # refused now, not after the training
        layout = [FeatureBlock.of(s.name, s.provenance) for s in opened]
        classes = opened[0].split_meta(options["train_split"]).classes or None  # None: numbered only, known later
        for target in targets:
            resolve_target(target, layout, classes)
    return ProbeConfig(stores=tuple(store_paths), heads=heads, val_fraction=val_fraction, views=views, preset=name,
                       dataset=dataset, solver=solver_cfg, save_head=Path(save_head) if save_head else None,
                       evaluate=targets, opened=tuple(opened) or None, **options)  # fmt: skip


def probe_key_for(cfg: ProbeConfig, stores: Sequence[Store] | None = None) -> str:
    """The :attr:`ProbeRecord.key` that :func:`~featcache.probe.run_probe` gives ``cfg``'s record, known before
    probing.

    Reads only the stores' metadata (provenance, splits, views) and builds the key from the same
    :class:`StoreUsed` and :class:`ViewsUsed` entries that ``run_probe`` records, with the same split and view
    rules, so a sweep can tell whether a probe is already in the results log.

    Args:
        cfg: the probe as it would run.
        stores: ``cfg.stores`` already opened (default: ``cfg.opened``, else open them).

    Returns:
        The key, a 16-hex-digit string.

    Raises:
        StoreError: a store cannot be opened, or lacks the train split.
    """
    stores = list(stores if stores is not None else cfg.opened or [Store(p) for p in cfg.stores])
    first = stores[0]
    train_split, test_split = default_splits(first.splits, cfg.train_split, cfg.test_split)
    count = cfg.views if cfg.views is not None else shared_views(stores, train_split)
    made = first.split_meta(train_split).views  # run_probe records the first store's crops (all share them)
    views = ViewsUsed(count, made.seed, dict(made.augment)) if count and made is not None else ViewsUsed(count)
    hyperparameters = dataclasses.asdict(cfg.heads if cfg.solver is None else cfg.solver)
    subset = describe(cfg.train_fraction, first.provenance.dataset.format) if cfg.train_fraction else None
    return record_key(
        dataset=first.provenance.dataset.name,
        stores=[StoreUsed.of(s.name, s.path, s.provenance, s.provenance.feature_dim) for s in stores],
        train_split=train_split,
        test_split=test_split,
        preset=cfg.preset,
        solver=cfg.solver_name,
        hyperparameters={**hyperparameters, "val_fraction": cfg.val_fraction},
        views=views,
        train_subset=subset,
    )
