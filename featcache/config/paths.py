"""The roots every command works under, and where the registry layers are read from.

``ROOTS`` is the one description of the root options: the CLI builds ``--data-dir`` ... ``--results`` from it, and
:meth:`Paths.from_env` reads the same environment variables and defaults.
"""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..locations import RemotePath, is_url, location

__all__ = ["ROOTS", "ENV", "DEFAULTS", "REMOTE_ROOTS", "Paths", "packaged_config_dir", "parse_root", "resolve_under"]


@dataclass(frozen=True)
class Root:
    """One root: its :class:`Paths` field, option, environment variable, default and help."""

    key: str
    option: str
    env: str
    default: str | None
    help: str


ROOTS = (
    Root("data", "--data-dir", "FEATCACHE_DATA", "./data",
         "Dataset root (env FEATCACHE_DATA); registry roots are relative to it."),
    Root("cache", "--cache-dir", "FEATCACHE_CACHE", "./cache",
         "Store root (env FEATCACHE_CACHE): <cache>/<dataset>/<store>.zarr; a directory or an object-store URL "
         "(s3://BUCKET/PREFIX, gs://...)."),
    Root("checkpoints", "--checkpoint-dir", "FEATCACHE_CHECKPOINTS", "./checkpoints",
         "Checkpoint root (env FEATCACHE_CHECKPOINTS); registry paths are relative to it."),
    Root("config", "--config-dir", "FEATCACHE_CONFIG", None,
         "Extra registries (env FEATCACHE_CONFIG) read after the packaged ones and ./configs; same names override."),
    Root("results", "--results", "FEATCACHE_RESULTS", None,
         "Results log (env FEATCACHE_RESULTS; default <cache>/results.jsonl, ./cache/results.jsonl for a remote "
         "cache), e.g. to probe a read-only cache; an object-store URL is a prefix holding one object per record."),
)  # fmt: skip
ENV = {r.key: r.env for r in ROOTS}
DEFAULTS = {r.key: r.default for r in ROOTS if r.default is not None}
REMOTE_ROOTS = ("cache", "results")  # the roots that may be object-store URLs (see featcache.locations)


def parse_root(key: str, value: str | os.PathLike) -> Path | RemotePath:
    """A root option's value: an object-store URL for the cache and the results log, else a local path.

    Raises:
        ConfigError: a URL for another root, without a bucket, or of an unknown protocol.
    """
    option = next(r.option for r in ROOTS if r.key == key)
    if key in REMOTE_ROOTS:
        return location(value, option)
    if is_url(value):
        raise ConfigError(f"{option} '{value}' is a URL; only --cache-dir and --results may be on object storage")
    return Path(value)


def packaged_config_dir() -> Path:
    """The registries shipped with featcache (the repository's ``configs/`` in a source checkout)."""
    try:
        return Path(str(importlib.resources.files("featcache._configs")))
    except ModuleNotFoundError:  # a source tree on PYTHONPATH, not installed: the registries beside the package
        return Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class Paths:
    """The roots every command works under.

    ``config`` is an extra registry layer (None: the packaged registries and ``./configs`` only);
    ``results`` is the results log (None: ``<cache>/results.jsonl``).
    """

    data: Path
    cache: Path | RemotePath
    checkpoints: Path
    config: Path | None = None
    results: Path | RemotePath | None = None

    @classmethod
    def from_env(cls, **given: str | os.PathLike | None) -> Paths:
        """Explicit value, else the environment variable, else the default (``./data`` etc.).

        Raises:
            ConfigError: see :func:`parse_root`.
        """
        out = {}
        for k, env in ENV.items():
            value = given.get(k) or os.environ.get(env) or DEFAULTS.get(k)
            out[k] = parse_root(k, value) if value else None
        return cls(**out)

    @property
    def local_cache(self) -> Path:
        """The cache when it is local; for a cache on object storage the default local one (``./cache``), where
        the results log and reports stay."""
        return self.cache if isinstance(self.cache, Path) else Path(DEFAULTS["cache"])

    @property
    def results_log(self) -> Path | RemotePath:
        """``--results``, else ``<cache>/results.jsonl`` (a remote cache's log stays local: see :attr:`local_cache`)."""
        return self.results or self.local_cache / "results.jsonl"

    def config_dirs(self) -> list[Path]:
        """Registry layers, first to last (see :mod:`featcache.config`), without repeats.

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
