"""Finding stores: ``featcache ls`` summaries, ``--stores`` resolution, and whether a store already holds what an
extraction asks for (see :mod:`featcache.store`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, StoreError
from ..locations import RemotePath, location
from ._format import FORMAT_VERSION, Layout, open_group, store_path
from ._lock import describe_lock
from ._reader import Store
from ._schema import Provenance, SplitMeta, ViewsMeta, identity_diff, parse

__all__ = ["StoreSummary", "already_complete", "list_stores", "resolve_stores"]


@dataclass(frozen=True)
class StoreSummary:
    """One row of ``featcache ls``: typed fields for JSON, flattened for the table by the CLI."""

    dataset: str
    store: str
    path: str
    status: str  # complete | incomplete | damaged | being written | stale lock | unreadable
    splits: dict[str, dict] = field(default_factory=dict)  # name -> {rows, complete, chunks, written, views}
    dim: int | None = None
    dtype: str | None = None
    precision: str | None = None
    checkpoint: str | None = None
    arch: str | None = None
    layer: str | None = None
    transform: str | None = None
    preprocess: str | None = None
    fidelity: str | None = None  # strict or fast (featcache.fidelity)
    lock: str | None = None  # who holds the lock, when one exists
    problem: str | None = None

    def row(self) -> dict:
        """The flat row of the ``featcache ls`` table: rows and chunk progress per split in one cell each."""
        unfinished = ", ".join(f"{k}: {v['written']}/{v['chunks']} chunks" for k, v in self.splits.items()
                               if not v["complete"])  # fmt: skip
        return {
            "dataset": self.dataset,
            "store": self.store,
            "status": self.status,
            "rows": " ".join(f"{k}:{v['rows']}" for k, v in self.splits.items()),
            "views": max((v["views"] for v in self.splits.values()), default=0),
            "dim": self.dim,
            "dtype": self.dtype,
            "precision": self.precision,
            "fidelity": self.fidelity,
            "checkpoint": self.checkpoint,
            "arch": self.arch,
            "transform": self.transform,
            "note": self.lock or self.problem or unfinished,
        }


def list_stores(cache_dir: str | os.PathLike, dataset: str | None = None) -> list[StoreSummary]:
    """One summary per store under ``cache_dir`` (optionally one dataset's), for ``featcache ls``."""
    root = location(cache_dir, "--cache-dir")
    pattern = f"{store_path(root, dataset, 'x').parent.name}/*.zarr" if dataset else "*/*.zarr"
    out = []
    for path in sorted(root.glob(pattern)):
        base = {"dataset": path.parent.name, "store": path.stem, "path": str(path)}
        try:
            store = Store(path)
            readers = [store.split(name, require_complete=False) for name in store.splits]
        except StoreError as e:
            out.append(StoreSummary(**base, status="unreadable", problem=str(e)))
            continue
        prov = store.provenance
        lock = describe_lock(store.layout.lock)
        verdict = store.last_verdict()
        damaged = verdict is not None and verdict.get("status", "ok" if verdict.get("ok") else "damaged") == "damaged"
        if lock is not None:
            status = "stale lock" if lock["stale"] else "being written"
        elif damaged:
            status = "damaged"
        else:
            status = "complete" if readers and all(r.complete for r in readers) else "incomplete"
        out.append(
            StoreSummary(
                **base,
                status=status,
                splits={
                    r.name: {
                        "rows": r.rows,
                        "complete": r.complete,
                        "chunks": r.n_chunks,
                        "written": r.written(),
                        "views": r.n_views,
                    }  # fmt: skip
                    for r in readers
                },
                dim=prov.feature_dim,
                dtype=prov.dtype,
                precision=prov.precision,
                checkpoint=prov.checkpoint.name,
                arch=prov.checkpoint.arch,
                layer=prov.layer,
                transform=prov.transform_name,
                preprocess=prov.preprocess.backend,
                fidelity=prov.fidelity,
                lock=None if lock is None else lock["text"],
                problem=(verdict["problems"][0] if damaged and verdict.get("problems") else None),
            )
        )
    if not out and isinstance(root, RemotePath):
        root.check_bucket()  # "no stores" must not hide a bucket that does not exist
    return out


def resolve_stores(
    spec: str, dataset: str | None, cache_dir: Path | RemotePath, sets: dict[str, Sequence[str]] | None = None
) -> list[Path | RemotePath]:
    """Resolve ``--stores``: store names under ``<cache>/<dataset>/``, checkpoint set names, or paths.

    A store given by path (ending in ``.zarr`` or holding a ``/``) needs no dataset.

    Raises:
        ConfigError: an empty list, names given without a dataset, or one store named twice (by name, path or
            through a set): concatenating a store with itself is never meant.
        StoreError: a named store does not exist (the extract command that makes it is suggested).
    """
    out: list[Path | RemotePath] = []
    given: dict[Path | RemotePath, tuple[Path | RemotePath, str]] = {}  # resolved path -> where, how first named
    tokens = [t.strip() for t in spec.split(",")]
    if not any(tokens):
        raise ConfigError("--stores is empty; name at least one store, set or store path")
    for token in tokens:
        if not token:
            continue
        names = list(sets[token]) if token in (sets or {}) else [token]
        for name in names:
            by_path = name.endswith(".zarr") or os.sep in name
            if by_path:
                path = location(name, "--stores")
            elif dataset is None:
                raise ConfigError(f"--stores '{name}' is a store name: pass --dataset to say whose, or give its path")
            else:
                path = store_path(cache_dir, dataset, name)
            if not (path / "zarr.json").exists():
                if isinstance(path, RemotePath):
                    path.check_bucket()
                if by_path:  # not a checkpoint's name: extracting "--ckpt <path>" would be no fix
                    fix = f"check the path (`featcache ls --cache-dir {path.parent.parent}` lists the stores there)"
                else:
                    fix = f"create it with `featcache extract --ckpt {name} --dataset {dataset}`"
                raise StoreError(f"no store {path}; {fix}")
            key = path.resolve()
            how = name if name == token else f"{name} (in set {token})"
            if key in given:
                first, was = given[key]
                raise ConfigError(
                    f"--stores names store {first} twice ('{was}' and '{how}'); concatenating a store with itself "
                    "is never meant: name each store once"
                )
            given[key] = (path, how)
            out.append(path)
    return out


def already_complete(
    path: Path | RemotePath, provenance: Provenance, wanted: dict[str, tuple[SplitMeta, ViewsMeta | None]]
) -> bool:
    """Whether the store at ``path`` already holds all of ``wanted`` complete: nothing to write, no lock to take.

    Read only, so that a complete store on a read-only cache is reported as such. Anything else (no store,
    another identity or format, a split missing, incomplete or of other samples, fewer views or other crops,
    a lock left by a writer, dead or alive) is False: the writer then resumes it, takes over a dead writer's
    lock, or says what differs.

    Args:
        wanted: split name -> (its planned metadata, the views asked for or None).
    """
    layout = Layout(path)
    if layout.lock.exists() or layout.shard_locks():
        return False
    try:
        doc = open_group(path, mode="r").attrs.get("featcache")
        if not isinstance(doc, dict) or doc.get("format_version") != FORMAT_VERSION:
            return False
        prov = parse(Provenance, doc, f"{path}: provenance")
        if identity_diff(prov.identity(), provenance.identity()):
            return False
        for name, (want, views) in wanted.items():
            split = open_group(path / name, mode="r").attrs.get("featcache_split") if name in prov.splits else None
            old = parse(SplitMeta, split, f"{path}/{name}: split metadata") if isinstance(split, dict) else None
            if old is None or not old.complete or old.content_diff(want):
                return False
            if views is not None and views.count:
                if old.n_views < views.count or (old.views.seed, old.views.augment) != (views.seed, views.augment):
                    return False
    except (OSError, ValueError, StoreError):
        return False
    return True
