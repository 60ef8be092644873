"""Paths and the YAML registries (checkpoints, datasets, transforms, probe presets).

Everything here is plain data: no torch, so the probe side can read the registries too.
Registry paths are resolved under their root and may not escape it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, unknown_name

__all__ = [
    "Paths",
    "CheckpointSpec",
    "TransformSpec",
    "DatasetSpec",
    "Registry",
    "load_registry",
    "resolve_under",
]

ENV = {
    "data": "FEATCACHE_DATA",
    "cache": "FEATCACHE_CACHE",
    "checkpoints": "FEATCACHE_CHECKPOINTS",
    "config": "FEATCACHE_CONFIG",
}
DEFAULTS = {"data": "./data", "cache": "./cache", "checkpoints": "./checkpoints", "config": "./configs"}
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt")


@dataclass(frozen=True)
class Paths:
    """The four roots every command works under."""

    data: Path
    cache: Path
    checkpoints: Path
    config: Path

    @classmethod
    def from_env(cls, **given: str | os.PathLike | None) -> Paths:
        """Explicit value, else the environment variable, else the default (``./data`` etc.)."""
        return cls(**{k: Path(given.get(k) or os.environ.get(ENV[k]) or DEFAULTS[k]) for k in ENV})


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


@dataclass(frozen=True)
class TransformSpec:
    """Eval preprocessing by named parameters: Resize(resize) -> CenterCrop(crop) -> Normalize."""

    name: str
    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
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
    wd_grid: str
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


class Registry:
    """All registries of one config dir, resolved against :class:`Paths`."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.checkpoints: dict[str, CheckpointSpec] = {}
        self.sets: dict[str, tuple[str, ...]] = {}
        self._load_checkpoints()
        self._load_datasets()
        self._load_probes()

    # --- checkpoints -------------------------------------------------------------------------
    def _load_checkpoints(self) -> None:
        main = self.paths.config / "checkpoints.yaml"
        files = [main] + sorted((self.paths.config / "checkpoints.d").glob("*.yaml"))
        for path in files:
            doc = _read_yaml(path)
            if "checkpoints" in doc or "sets" in doc:
                self._add_native(doc, path)
            else:
                self._add_research(doc, path)
        for name, members in self.sets.items():
            for m in members:
                if m not in self.checkpoints:
                    raise unknown_name("checkpoint", m, self.checkpoints, f"listed in set '{name}'")

    def _add_checkpoint(self, name: str, arch: str, rel: str, where: str, ema: bool = False) -> None:
        if name in self.checkpoints or name in self.sets:
            raise ConfigError(f"{where}: checkpoint name '{name}' is registered twice")
        path = resolve_under(self.paths.checkpoints, rel, f"{where}: path")
        self.checkpoints[name] = CheckpointSpec(name, arch, path, ema)

    def _add_set(self, name: str, members: list[str], where: str) -> None:
        if name in self.checkpoints or name in self.sets:
            raise ConfigError(f"{where}: set name '{name}' is already a checkpoint or set")
        self.sets[name] = tuple(members)

    def _add_native(self, doc: dict, path: Path) -> None:
        for name, entry in (doc.get("checkpoints") or {}).items():
            where = f"{path}: checkpoints.{name}"
            self._add_checkpoint(
                str(name),
                _need(entry, "arch", where),
                _need(entry, "path", where),
                where,
                bool(entry.get("ema", False)),
            )
        for name, members in (doc.get("sets") or {}).items():
            if not isinstance(members, list) or not members:
                raise ConfigError(f"{path}: sets.{name} must be a non-empty list of checkpoint names")
            self._add_set(str(name), [str(m) for m in members], f"{path}: sets.{name}")

    def _add_research(self, doc: dict, path: Path) -> None:
        # The research registry: `tag: {arch: [a, ...] or a, pretrained: [p, ...] or p, ...}`.
        # Each tag becomes a set whose members are `<tag>-run<i>`; other keys are training flags
        # the research code copied onto argparse and are ignored here.
        for tag, entry in doc.items():
            where = f"{path}: {tag}"
            pretrained = _need(entry, "pretrained", where, (str, list))
            arch = _need(entry, "arch", where, (str, list))
            pretrained = [pretrained] if isinstance(pretrained, str) else pretrained
            archs = [arch] * len(pretrained) if isinstance(arch, str) else arch
            if len(archs) != len(pretrained):
                raise ConfigError(f"{where}: 'arch' has {len(archs)} entries but 'pretrained' has {len(pretrained)}")
            members = [f"{tag}-run{i}" for i in range(len(pretrained))]
            for m, a, p in zip(members, archs, pretrained, strict=True):
                self._add_checkpoint(m, str(a), str(p), where)
            self._add_set(str(tag), members, where)

    def expand_checkpoints(self, spec: str, arch: str | None = None) -> list[CheckpointSpec]:
        """Resolve ``--ckpt``: a name, a set, a comma-separated mix, or file paths (which need ``arch``).

        Raises:
            ConfigError: unknown name (closest names suggested), or a file path given without ``arch``.
        """
        out: dict[str, CheckpointSpec] = {}
        for token in (t.strip() for t in spec.split(",")):
            if not token:
                continue
            if token in self.sets:
                specs = [self.checkpoints[m] for m in self.sets[token]]
            elif token in self.checkpoints:
                specs = [self.checkpoints[token]]
            elif os.sep in token or token.endswith(CHECKPOINT_SUFFIXES) or Path(token).is_file():
                if arch is None:
                    raise ConfigError(f"--ckpt '{token}' is a file path: pass --arch to say what network it holds")
                p = Path(token)
                if not p.is_file():
                    raise ConfigError(f"--ckpt file '{token}' not found")
                name = p.name.split(".")[0]
                specs = [CheckpointSpec(name, arch, p.resolve())]
            else:
                known = list(self.checkpoints) + list(self.sets)
                raise unknown_name("checkpoint", token, known, "or give a file path with --arch")
            for s in specs:
                if arch is not None and s.arch is not None and s.arch != arch and s.name in self.checkpoints:
                    raise ConfigError(
                        f"--arch {arch} contradicts the registry, which says '{s.name}' is {s.arch}; drop --arch"
                    )
                out.setdefault(s.name, s)
        if not out:
            raise ConfigError("--ckpt is empty; give a checkpoint name, set name or file path")
        return list(out.values())

    # --- datasets and transforms ---------------------------------------------------------------
    def _load_datasets(self) -> None:
        path = self.paths.config / "datasets.yaml"
        doc = _read_yaml(path)
        self.transforms: dict[str, TransformSpec] = {}
        for name, t in (doc.get("transforms") or {}).items():
            where = f"{path}: transforms.{name}"
            try:
                self.transforms[name] = TransformSpec(
                    name=name,
                    resize=int(t["resize"]),
                    crop=int(t["crop"]),
                    interpolation=str(t.get("interpolation", "bilinear")),
                    mean=tuple(float(v) for v in t["mean"]),
                    std=tuple(float(v) for v in t["std"]),
                )
            except (KeyError, TypeError, ValueError) as e:
                raise ConfigError(f"{where}: needs resize, crop, mean, std ({e})") from None
        self._dataset_entries: dict[str, dict] = dict(doc.get("datasets") or {})
        self._imagefolder_template: dict = dict(doc.get("imagefolder") or {})
        self._datasets_file = path

    def dataset_names(self) -> list[str]:
        return sorted(self._dataset_entries) + ["imagefolder:<path>"]

    def dataset(self, name: str) -> DatasetSpec:
        """Resolve ``--dataset``: a registered name, or ``imagefolder:<path>``.

        Raises:
            ConfigError: unknown name (closest names suggested) or a malformed entry.
        """
        if name.startswith("imagefolder:"):
            rel = name.split(":", 1)[1]
            root = Path(rel) if os.path.isabs(rel) else resolve_under(self.paths.data, rel, "--dataset path")
            entry = dict(self._imagefolder_template)
            names = [d for d in ("train", "val", "test") if (root / d).is_dir()]
            entry["splits"] = names or ["all"]
            if not names:
                entry["train_split"] = entry["test_split"] = "all"
            return self._dataset_spec(name, entry, root=root)
        if name not in self._dataset_entries:
            raise unknown_name("dataset", name, self.dataset_names())
        entry = self._dataset_entries[name]
        return self._dataset_spec(name, entry)

    def _dataset_spec(self, name: str, entry: dict, root: Path | None = None) -> DatasetSpec:
        where = f"{self._datasets_file}: datasets.{name}"
        transforms = dict(_need(entry, "transforms", where, dict))
        for preset in transforms.values():
            if preset not in self.transforms:
                raise unknown_name("transform preset", preset, self.transforms, f"used by {where}")
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
            wd_grid=str(entry.get("wd_grid", "")),
            options=dict(entry.get("options") or {}),
        )

    def transform(self, dataset: DatasetSpec, name: str | None) -> TransformSpec:
        """The preset behind ``--transform name`` for ``dataset`` (its default when ``name`` is None)."""
        name = name or dataset.default_transform
        if name in dataset.transforms:
            return self.transforms[dataset.transforms[name]]
        if name in self.transforms:  # a preset given by its full name
            return self.transforms[name]
        raise unknown_name("transform", name, dataset.transforms, f"for dataset '{dataset.name}'")

    # --- probe presets ---------------------------------------------------------------------------
    def _load_probes(self) -> None:
        path = self.paths.config / "probes.yaml"
        doc = _read_yaml(path)
        self.probe_presets: dict[str, dict] = dict(doc.get("presets") or {})
        self.wd_grids: dict[str, list[float]] = {
            k: [float(v) for v in vs] for k, vs in (doc.get("wd_grids") or {}).items()
        }

    def probe_preset(self, name: str) -> dict:
        if name not in self.probe_presets:
            raise unknown_name("probe preset", name, self.probe_presets)
        return dict(self.probe_presets[name])

    def wd_grid(self, dataset_name: str) -> list[float]:
        """Default weight-decay grid for a dataset (by its registry entry), else the CIFAR grid."""
        entry = self._dataset_entries.get(dataset_name) or self._imagefolder_template
        grid = entry.get("wd_grid") or "cifar"
        if grid not in self.wd_grids:
            raise unknown_name("weight-decay grid", grid, self.wd_grids, f"named by dataset '{dataset_name}'")
        return list(self.wd_grids[grid])


def load_registry(paths: Paths) -> Registry:
    """Read every registry under ``paths.config``.

    Raises:
        ConfigError: a file is missing or malformed, a name is registered twice, a path escapes its root.
    """
    if not paths.config.is_dir():
        raise ConfigError(f"config dir {paths.config} not found; pass --config-dir or set FEATCACHE_CONFIG")
    return Registry(paths)
