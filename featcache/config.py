"""Paths and the YAML registries (checkpoints, datasets, transforms, probe presets).

Registries are read in layers, later ones adding entries or replacing entries of the same name:

1. the registries that ship inside the package (``featcache/_configs``, the repository's ``configs/``),
2. ``./configs`` of the working directory, when it exists,
3. ``--config-dir`` / ``FEATCACHE_CONFIG``.

Each layer may hold ``checkpoints.yaml``, ``checkpoints.d/*.yaml``, ``datasets.yaml`` and ``probes.yaml``.
Entries are checked when a command uses them, so a broken entry stops only the commands that need it.
Everything here is plain data: no torch, so the probe side can read the registries too. Registry paths are
resolved under their root and may not escape it.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, unknown_name

__all__ = [
    "Paths",
    "CheckpointSpec",
    "AugmentSpec",
    "TransformSpec",
    "DatasetSpec",
    "Registry",
    "load_registry",
    "resolve_under",
    "packaged_config_dir",
]

ENV = {
    "data": "FEATCACHE_DATA",
    "cache": "FEATCACHE_CACHE",
    "checkpoints": "FEATCACHE_CHECKPOINTS",
    "config": "FEATCACHE_CONFIG",
    "results": "FEATCACHE_RESULTS",
}
DEFAULTS = {"data": "./data", "cache": "./cache", "checkpoints": "./checkpoints"}
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt", ".safetensors")


def packaged_config_dir() -> Path:
    """The registries shipped with featcache (the repository's ``configs/`` in a source checkout)."""
    try:
        return Path(str(importlib.resources.files("featcache._configs")))
    except ModuleNotFoundError:  # a source tree on PYTHONPATH, not installed: the registries beside the package
        return Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Paths:
    """The roots every command works under.

    ``config`` is an extra registry layer (None: the packaged registries and ``./configs`` only);
    ``results`` is the results log (None: ``<cache>/results.jsonl``).
    """

    data: Path
    cache: Path
    checkpoints: Path
    config: Path | None = None
    results: Path | None = None

    @classmethod
    def from_env(cls, **given: str | os.PathLike | None) -> Paths:
        """Explicit value, else the environment variable, else the default (``./data`` etc.)."""
        out = {}
        for k, env in ENV.items():
            value = given.get(k) or os.environ.get(env) or DEFAULTS.get(k)
            out[k] = Path(value) if value else None
        return cls(**out)

    @property
    def results_log(self) -> Path:
        return self.results or self.cache / "results.jsonl"

    def config_dirs(self) -> list[Path]:
        """Registry layers, first to last (see the module docstring), without repeats.

        Raises:
            ConfigError: an explicitly given config dir does not exist.
        """
        if self.config is not None and not self.config.is_dir():
            raise ConfigError(f"config dir {self.config} not found; pass --config-dir or set FEATCACHE_CONFIG")
        out: list[Path] = []
        for d in (packaged_config_dir(), Path("configs"), self.config):
            if d is not None and d.is_dir() and all(not d.samefile(o) for o in out):
                out.append(d)
        return out


def resolve_under(root: Path, rel: str | os.PathLike, what: str) -> Path:
    """Join ``rel`` onto ``root`` and refuse anything that would land outside ``root``.

    Raises:
        ConfigError: ``rel`` is absolute or climbs out of ``root`` (``../``, symlink tricks aside).
    """
    rel = str(rel)
    if os.path.isabs(rel):
        raise ConfigError(f"{what} '{rel}' is an absolute path; it must be relative to {root}")
    root_abs = Path(os.path.abspath(root))
    path = Path(os.path.normpath(root_abs / rel))
    if path != root_abs and root_abs not in path.parents:
        raise ConfigError(f"{what} '{rel}' escapes its root {root}; refusing to read outside it")
    return path


@dataclass(frozen=True)
class CheckpointSpec:
    """One registered (or ad-hoc) checkpoint: a name, an architecture and a file."""

    name: str
    arch: str | None
    path: Path  # absolute once resolved
    ema: bool = False
    ema_source: str | None = None  # who asked for the EMA weights: "registry" (ema: true) or "option" (--ema)


@dataclass(frozen=True)
class AugmentSpec:
    """The research training transform: RandomResizedCrop(size, scale, ratio, interpolation) + horizontal flip."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    interpolation: str
    hflip: float  # probability of a horizontal flip

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "interpolation": self.interpolation,
            "hflip": self.hflip,
        }


@dataclass(frozen=True)
class TransformSpec:
    """Eval preprocessing by named parameters: Resize(resize) -> CenterCrop(crop) -> Normalize.

    ``augment`` is the matching training transform (for stored views), when the preset defines one.
    """

    name: str
    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: AugmentSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        """The evaluation parameters, as recorded in a store (the augmentation is recorded with the views)."""
        return {
            "name": self.name,
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its on-disk format, where it lives and how it is probed."""

    name: str
    format: str
    root: Path  # absolute
    splits: tuple[str, ...]
    train_split: str
    test_split: str
    transforms: dict[str, str]  # --transform name -> preset name; first is the default
    probe: str  # the probe preset of probes.yaml for this dataset
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def default_transform(self) -> str:
        return next(iter(self.transforms))


def _read_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"registry file {path} not found; pass --config-dir or set FEATCACHE_CONFIG") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"registry file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise ConfigError(f"registry file {path} cannot be read ({e.strerror})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"registry file {path} must hold a mapping at top level")
    return doc


def _need(entry: Any, key: str, where: str, kind: type | tuple = str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise ConfigError(f"{where}: missing key '{key}'")
    value = entry[key]
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: key '{key}' must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


@dataclass
class _Entry:
    """A registry entry as read: where it came from and a function that builds (and checks) it on first use."""

    where: str
    build: Callable[[], Any]


class _Table:
    """One kind of registry entry across layers: a duplicate within a layer is an error, a later layer overrides."""

    def __init__(self, kind: str):
        self.kind = kind
        self.entries: dict[str, _Entry] = {}
        self._layer: dict[str, int] = {}
        self._built: dict[str, Any] = {}

    def add(self, name: str, layer: int, entry: _Entry, others: tuple[_Table, ...] = ()) -> None:
        for table in (self, *others):
            if table._layer.get(name) == layer:
                what = "registered twice" if table is self else f"already a {table.kind}"
                self.entries[name] = _Entry(entry.where, _raiser(f"{entry.where}: {self.kind} name '{name}' is {what}"))
                return
        for table in others:  # a later layer's entry of another kind replaces this name too
            table.entries.pop(name, None)
        self.entries[name], self._layer[name] = entry, layer

    def get(self, name: str) -> Any:
        if name not in self._built:
            self._built[name] = self.entries[name].build()
        return self._built[name]

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)


def _working(table: _Table) -> dict[str, Any]:
    out = {}
    for name in table.names():
        try:
            out[name] = table.get(name)
        except ConfigError:
            continue
    return out


def _raiser(message: str) -> Callable[[], Any]:
    def fail() -> Any:
        raise ConfigError(message)

    return fail


class Registry:
    """All registry layers of :meth:`Paths.config_dirs`, resolved against :class:`Paths` on first use."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.dirs = paths.config_dirs()

    def _files(self, name: str) -> list[tuple[int, Path]]:
        return [(k, d / name) for k, d in enumerate(self.dirs) if (d / name).is_file()]

    # --- checkpoints -------------------------------------------------------------------------
    @functools.cached_property
    def _ckpt_tables(self) -> tuple[_Table, _Table]:
        ckpts, sets = _Table("checkpoint"), _Table("set")
        files = self._files("checkpoints.yaml")
        for k, d in enumerate(self.dirs):
            files += [(k, p) for p in sorted((d / "checkpoints.d").glob("*.yaml"))]
        for layer, path in sorted(files, key=lambda f: f[0]):
            doc = _read_yaml(path)
            if "checkpoints" in doc or "sets" in doc:
                self._add_native(doc, path, layer, ckpts, sets)
            else:
                self._add_research(doc, path, layer, ckpts, sets)
        return ckpts, sets

    @property
    def checkpoints(self) -> dict[str, CheckpointSpec]:
        """Every checkpoint entry that builds (broken ones are left out; using one by name raises)."""
        return _working(self._ckpt_tables[0])

    @property
    def sets(self) -> dict[str, tuple[str, ...]]:
        """Every set entry that builds (broken ones are left out; using one by name raises)."""
        return _working(self._ckpt_tables[1])

    def checkpoint(self, name: str) -> CheckpointSpec:
        """The registered checkpoint ``name``.

        Raises:
            ConfigError: unknown name (closest names suggested), or its entry is broken (says which file and why).
        """
        ckpts, sets = self._ckpt_tables
        if name not in ckpts:
            raise unknown_name("checkpoint", name, ckpts.names() + sets.names())
        return ckpts.get(name)

    def _checkpoint_entry(self, name: str, arch: Any, rel: Any, where: str, ema: bool) -> _Entry:
        def build() -> CheckpointSpec:
            if not isinstance(arch, str):
                raise ConfigError(f"{where}: missing key 'arch'")
            if not isinstance(rel, str):
                raise ConfigError(f"{where}: missing key 'path'")
            path = resolve_under(self.paths.checkpoints, rel, f"{where}: path")
            return CheckpointSpec(name, arch, path, ema, "registry" if ema else None)

        return _Entry(where, build)

    def _set_entry(self, name: str, members: Any, where: str) -> _Entry:
        def build() -> tuple[str, ...]:
            if not isinstance(members, list) or not members:
                raise ConfigError(f"{where} must be a non-empty list of checkpoint names")
            ckpts = self._ckpt_tables[0]
            for m in members:
                if str(m) not in ckpts:
                    raise unknown_name("checkpoint", str(m), ckpts.names(), f"listed in set '{name}' ({where})")
            return tuple(str(m) for m in members)

        return _Entry(where, build)

    def _add_native(self, doc: dict, path: Path, layer: int, ckpts: _Table, sets: _Table) -> None:
        for name, entry in (doc.get("checkpoints") or {}).items():
            where = f"{path}: checkpoints.{name}"
            entry = entry if isinstance(entry, dict) else {}
            e = self._checkpoint_entry(str(name), entry.get("arch"), entry.get("path"), where, bool(entry.get("ema")))
            ckpts.add(str(name), layer, e, (sets,))
        for name, members in (doc.get("sets") or {}).items():
            where = f"{path}: sets.{name}"
            sets.add(str(name), layer, self._set_entry(str(name), members, where), (ckpts,))

    def _add_research(self, doc: dict, path: Path, layer: int, ckpts: _Table, sets: _Table) -> None:
        # The research registry: `tag: {arch: [a, ...] or a, pretrained: [p, ...] or p, ...}`.
        # Each tag becomes a set whose members are `<tag>-run<i>`; other keys are training flags
        # the research code copied onto argparse and are ignored here.
        for tag, entry in doc.items():
            where = f"{path}: {tag}"
            try:
                pretrained = _need(entry, "pretrained", where, (str, list))
                arch = _need(entry, "arch", where, (str, list))
            except ConfigError as e:
                sets.add(str(tag), layer, _Entry(where, _raiser(str(e))), (ckpts,))
                continue
            pretrained = [pretrained] if isinstance(pretrained, str) else pretrained
            archs = [arch] * len(pretrained) if isinstance(arch, str) else arch
            if len(archs) != len(pretrained):
                why = f"{where}: 'arch' has {len(archs)} entries but 'pretrained' has {len(pretrained)}"
                sets.add(str(tag), layer, _Entry(where, _raiser(why)), (ckpts,))
                continue
            members = [f"{tag}-run{i}" for i in range(len(pretrained))]
            for m, a, p in zip(members, archs, pretrained, strict=True):
                ckpts.add(m, layer, self._checkpoint_entry(m, str(a), str(p), where, False), (sets,))
            sets.add(str(tag), layer, self._set_entry(str(tag), members, where), (ckpts,))

    def expand_checkpoints(self, spec: str, arch: str | None = None) -> list[CheckpointSpec]:
        """Resolve ``--ckpt``: a name, a set, a comma-separated mix, or file paths (which need ``arch``).

        Two files with the same stem in different folders get names that tell them apart
        (``a-model``, ``b-model``): none is ever dropped.

        Raises:
            ConfigError: unknown name (closest names suggested), a broken entry, or a file path given
                without ``arch``.
        """
        ckpts, sets = self._ckpt_tables
        out: list[CheckpointSpec] = []
        files: list[Path] = []
        for token in (t.strip() for t in spec.split(",")):
            if not token:
                continue
            if token in sets:
                specs = [ckpts.get(m) for m in sets.get(token)]
            elif token in ckpts:
                specs = [ckpts.get(token)]
            elif os.sep in token or token.endswith(CHECKPOINT_SUFFIXES) or Path(token).is_file():
                if arch is None:
                    raise ConfigError(f"--ckpt '{token}' is a file path: pass --arch to say what network it holds")
                p = Path(token)
                if not p.is_file():
                    raise ConfigError(f"--ckpt file '{token}' not found")
                if p.resolve() not in files:
                    files.append(p.resolve())
                continue
            else:
                raise unknown_name("checkpoint", token, ckpts.names() + sets.names(), "or give a file path with --arch")
            for s in specs:
                if arch is not None and s.arch is not None and s.arch != arch:
                    raise ConfigError(
                        f"--arch {arch} contradicts the registry, which says '{s.name}' is {s.arch}; drop --arch"
                    )
                if s not in out:
                    out.append(s)
        out += [CheckpointSpec(name, arch, p) for name, p in zip(_file_names(files), files, strict=True)]
        if not out:
            raise ConfigError("--ckpt is empty; give a checkpoint name, set name or file path")
        return out

    # --- datasets and transforms ---------------------------------------------------------------
    @functools.cached_property
    def _dataset_tables(self) -> tuple[_Table, _Table, dict]:
        transforms, datasets = _Table("transform preset"), _Table("dataset")
        template: dict = {}
        for layer, path in self._files("datasets.yaml"):
            doc = _read_yaml(path)
            for name, t in (doc.get("transforms") or {}).items():
                transforms.add(
                    str(name), layer, _Entry(f"{path}: transforms.{name}", _transform_builder(name, t, path))
                )
            for name, entry in (doc.get("datasets") or {}).items():
                datasets.add(str(name), layer, _Entry(f"{path}: datasets.{name}", lambda e=entry: e))
            if isinstance(doc.get("imagefolder"), dict):
                template = {**doc["imagefolder"], "_where": f"{path}: imagefolder"}
        return transforms, datasets, template

    def dataset_names(self) -> list[str]:
        return sorted(self._dataset_tables[1].names()) + ["imagefolder:<path>"]

    def dataset(self, name: str) -> DatasetSpec:
        """Resolve ``--dataset``: a registered name, or ``imagefolder:<path>``.

        ``imagefolder:<path>``: a bare name (no ``/``) is a folder under the data root; anything else is a
        path like every other path option (relative to the working directory, or absolute). A trailing
        slash names the same dataset.

        Raises:
            ConfigError: unknown name (closest names suggested) or a malformed entry.
        """
        _, datasets, template = self._dataset_tables
        if name.startswith("imagefolder:"):
            rel = name.split(":", 1)[1].rstrip("/") or "."
            if "/" not in rel and rel not in (".", ".."):
                root, name = resolve_under(self.paths.data, rel, "--dataset imagefolder name"), f"imagefolder:{rel}"
            else:
                root = Path(os.path.abspath(rel))
                name = f"imagefolder:{root}"
            entry = {k: v for k, v in template.items() if k != "_where"}
            names = [d for d in ("train", "val", "test") if (root / d).is_dir()]
            entry["splits"] = names or ["all"]
            if not names:
                entry["train_split"] = entry["test_split"] = "all"
            return self._dataset_spec(name, entry, template.get("_where", "imagefolder"), root=root)
        if name not in datasets:
            raise unknown_name("dataset", name, self.dataset_names())
        return self._dataset_spec(name, datasets.get(name), datasets.entries[name].where)

    def _dataset_spec(self, name: str, entry: Any, where: str, root: Path | None = None) -> DatasetSpec:
        transforms = dict(_need(entry, "transforms", where, dict))
        for preset in transforms.values():
            if preset not in self._dataset_tables[0]:
                raise unknown_name("transform preset", preset, self._dataset_tables[0].names(), f"used by {where}")
        if root is None:
            root = resolve_under(self.paths.data, entry.get("root", name), f"{where}: root")
        splits = tuple(_need(entry, "splits", where, list))
        return DatasetSpec(
            name=name,
            format=_need(entry, "format", where),
            root=root,
            splits=splits,
            train_split=entry.get("train_split", splits[0]),
            test_split=entry.get("test_split", splits[-1]),
            transforms=transforms,
            probe=str(entry.get("probe", "cifar")),
            options=dict(entry.get("options") or {}),
        )

    @property
    def transforms(self) -> dict[str, TransformSpec]:
        table = self._dataset_tables[0]
        return {name: table.get(name) for name in table.names()}

    def transform(self, dataset: DatasetSpec, name: str | None) -> TransformSpec:
        """The preset behind ``--transform name`` for ``dataset`` (its default when ``name`` is None)."""
        table = self._dataset_tables[0]
        name = name or dataset.default_transform
        if name in dataset.transforms:
            return table.get(dataset.transforms[name])
        if name in table:  # a preset given by its full name
            return table.get(name)
        raise unknown_name("transform", name, dataset.transforms, f"for dataset '{dataset.name}'")

    # --- probe presets ---------------------------------------------------------------------------
    @functools.cached_property
    def _presets(self) -> _Table:
        presets = _Table("probe preset")
        for layer, path in self._files("probes.yaml"):
            for name, p in (_read_yaml(path).get("presets") or {}).items():
                where = f"{path}: presets.{name}"
                presets.add(str(name), layer, _Entry(where, _preset_builder(p, where)))
        return presets

    @property
    def probe_presets(self) -> dict[str, dict]:
        return _working(self._presets)

    def probe_preset(self, name: str) -> dict:
        """The probe preset ``name`` as a dict of its keys (validated by the probe)."""
        if name not in self._presets:
            raise unknown_name("probe preset", name, self._presets.names())
        return dict(self._presets.get(name))

    def preset_for(self, dataset: str) -> str:
        """The probe preset a dataset names (imagefolder datasets use the template's), else ``cifar``."""
        if dataset.startswith("imagefolder:"):
            return str(self._dataset_tables[2].get("probe", "cifar"))
        if dataset in self._dataset_tables[1]:
            entry = self._dataset_tables[1].get(dataset)
            return str(entry.get("probe", "cifar")) if isinstance(entry, dict) else "cifar"
        return "cifar"


def _transform_builder(name: str, t: Any, path: Path) -> Callable[[], TransformSpec]:
    where = f"{path}: transforms.{name}"

    def build() -> TransformSpec:
        try:
            train = t.get("train")
            augment = None
            if train is not None:
                augment = AugmentSpec(
                    size=int(t["crop"]),
                    scale=tuple(float(v) for v in train.get("scale", (0.08, 1.0))),
                    ratio=tuple(float(v) for v in train.get("ratio", (3 / 4, 4 / 3))),
                    interpolation=str(train.get("interpolation", t.get("interpolation", "bilinear"))),
                    hflip=float(train.get("hflip", 0.5)),
                )
            return TransformSpec(
                name=str(name),
                resize=int(t["resize"]),
                crop=int(t["crop"]),
                interpolation=str(t.get("interpolation", "bilinear")),
                mean=tuple(float(v) for v in t["mean"]),
                std=tuple(float(v) for v in t["std"]),
                augment=augment,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"{where}: needs resize, crop, mean, std (and train: scale, ratio, ...) ({e})") from None

    return build


def _preset_builder(p: Any, where: str) -> Callable[[], dict]:
    def build() -> dict:
        if not isinstance(p, dict):
            raise ConfigError(f"{where} must be a mapping of probe settings")
        return dict(p)

    return build


def _file_names(files: list[Path]) -> list[str]:
    """Store names for checkpoint files: the stem, prefixed by as many parent folders as tell equal stems apart."""

    def name(f: Path, depth: int) -> str:
        parents = f.parent.parts[len(f.parent.parts) - depth :] if depth else ()
        return "-".join([p.strip("/") for p in parents if p.strip("/")] + [f.name.split(".")[0]])

    out = []
    for f in files:
        depth = 0
        while depth < len(f.parent.parts) and any(name(g, depth) == name(f, depth) for g in files if g != f):
            depth += 1
        out.append(name(f, depth))
    return out


def load_registry(paths: Paths) -> Registry:
    """The registry layers for ``paths`` (read lazily, entry by entry).

    Raises:
        ConfigError: an explicitly given config dir does not exist.
    """
    return Registry(paths)
