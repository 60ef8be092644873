"""``featcache sync``: copy complete stores between caches, local or on object storage, verified chunk by chunk.

A copy keeps the store's write order (see :mod:`featcache.store`), so a killed sync leaves a store that readers
refuse and the next sync finishes: under the destination's lock, the root ``zarr.json`` first, listing no split; then
the arrays' metadata, ids, labels and bookkeeping groups; then each chunk, whose bytes are hashed against the
source's marker before they are written and read back after, then its marker; a split's ``zarr.json`` (which holds
``complete``) after all of its chunks; the source's root ``zarr.json``, which lists the splits, last. A destination
split whose ``zarr.json`` already has the source's bytes is skipped, and so is a chunk whose marker and object already
match, so a rerun copies only what is missing. A destination that holds another extraction of the store (same
identity, other chunking or bytes) is replaced: before its first change its root is rewritten listing no split, and
the files of its splits to copy that the source lacks are removed, so it is listed incomplete until the copy is whole.
A source chunk that is missing, short, unmarked or off its checksum stops the sync naming it and ``verify``. Locks,
temp files and ``verify`` verdicts are not copied.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, StoreError, StoreLockedError, StoreMismatchError
from ..locations import RemotePath, location
from ._catalog import list_stores
from ._format import Layout, disk_errors, read_chunk_bytes, read_marker, rmtree
from ._lock import describe_lock, lock_for
from ._reader import Store
from ._schema import ChunkMarker, Provenance, identity_diff, parse

__all__ = ["SyncResult", "sync_stores"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    """One store of a sync: ``status`` is ``copied``, ``up to date`` or ``skipped`` (with why in ``note``)."""

    dataset: str
    store: str
    source: str
    destination: str
    status: str
    chunks: int = 0  # chunk objects copied
    bytes: int = 0  # bytes copied, metadata included
    note: str = ""


def sync_stores(
    src: str | os.PathLike | RemotePath,
    dst: str | os.PathLike | RemotePath,
    *,
    dataset: str | None = None,
    stores: Sequence[str] = (),
) -> list[SyncResult]:
    """Copy the complete stores of cache ``src`` to cache ``dst`` (same ``<dataset>/<store>.zarr`` layout).

    Args:
        src, dst: cache roots: directories or object-store URLs.
        dataset: only this dataset's stores.
        stores: only stores whose name matches one of these (``fnmatch`` patterns: ``run*``).

    Returns:
        One :class:`SyncResult` per store considered, in listing order.

    Raises:
        ConfigError: nothing under ``src`` matches, ``src`` and ``dst`` are the same cache, or either is a store.
        StoreError: a source chunk does not match its checksum, or a copy read back differently.
        StoreMismatchError: the destination holds a store of that name made otherwise.
        StoreLockedError: a live writer (or shard) holds the destination store.
    """
    src_root, dst_root = location(src, "SRC"), location(dst, "DST")
    if str(src_root).rstrip("/") == str(dst_root).rstrip("/"):
        raise ConfigError(f"sync: SRC and DST are the same cache ({src_root}); name another DST")
    for what, root in (("SRC", src_root), ("DST", dst_root)):
        _refuse_store_root(what, root)
    found = [
        s for s in list_stores(src_root, dataset) if not stores or any(fnmatch.fnmatch(s.store, p) for p in stores)
    ]
    if not found:
        what = f" of dataset '{dataset}'" if dataset else ""
        named = f" named {', '.join(stores)}" if stores else ""
        raise ConfigError(f"sync: no stores{what}{named} under {src_root}; see `featcache ls --cache-dir {src_root}`")
    out = []
    for s in found:
        target = dst_root / s.dataset / f"{s.store}.zarr"
        base = {"dataset": s.dataset, "store": s.store, "source": s.path, "destination": str(target)}
        if s.status != "complete":
            out.append(SyncResult(**base, status="skipped", note=f"{s.status}: only complete stores are copied"))
            continue
        chunks, nbytes, changed = _copy_store(location(s.path), target)
        out.append(SyncResult(**base, status="copied" if changed else "up to date", chunks=chunks, bytes=nbytes))
    return out


def _refuse_store_root(what: str, root: Path | RemotePath) -> None:
    """SRC and DST are caches (``<cache>/<dataset>/<store>.zarr``): a store there would be searched for stores, or
    get stores written inside it."""
    store = next((p for p in (root, *root.parents) if p.name.endswith(".zarr")), None)
    if store is None and (root / "zarr.json").exists():
        store = root
    if store is not None:
        cache, dataset, name = store.parent.parent, store.parent.name, store.stem
        fix = (f"`featcache sync {cache} DST --dataset {dataset} --stores {name}` copies that store" if what == "SRC"
               else f"name the cache to copy into (such as {cache})")  # fmt: skip
        raise ConfigError(f"sync: {what} {root} is a store (or inside one), not a cache; {fix}")


def _files(root: Path | RemotePath) -> list[str]:
    """Every file of a store as a key relative to it, without locks, temp files and verdicts."""
    if isinstance(root, RemotePath):
        keys = root.find()
    else:
        keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return [k for k in keys if not (k.startswith(("_featcache/lock", "_featcache/verify/")) or k.endswith(".partial")
                                    or k.rsplit("/", 1)[-1].startswith("."))]  # fmt: skip


def _read(path: Path | RemotePath) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write(path: Path | RemotePath, data: bytes) -> None:
    """Write ``data`` whole: one PUT, or a temp file fsynced and renamed into place."""
    if isinstance(path, RemotePath):
        path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _copy_store(src_path: Path | RemotePath, dst: Path | RemotePath) -> tuple[int, int, bool]:
    """Copy one complete store; returns (chunks copied, bytes copied, whether anything changed)."""
    src = Store(src_path)
    src.refuse_if_being_written()
    readers = [src.split(name) for name in src.splits]  # every split complete, or StoreIncompleteError
    layout = Layout(dst)
    lock = lock_for(layout.lock, f"store {dst}")
    with disk_errors(dst):
        dst.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    try:
        with disk_errors(dst):
            _refuse_live_shards(layout, dst)
            return _copy_locked(src, readers, dst, lock)
    finally:
        lock.release()


def _refuse_live_shards(layout: Layout, dst: Path | RemotePath) -> None:
    # shards write their chunks under their own locks, not the store's: one alive means the store is being written
    for path in layout.shard_locks():
        holder = describe_lock(path)
        if holder is not None and not holder["stale"]:
            raise StoreLockedError(
                f"sync: store {dst} is being written by {path.name.removeprefix('lock-')} ({holder['text']}); wait "
                "for the shards to finish, then rerun the sync"
            )


def _copy_locked(src: Store, readers: list, dst: Path | RemotePath, lock) -> tuple[int, int, bool]:
    root_bytes = (src.path / "zarr.json").read_bytes()
    have = _read(dst / "zarr.json")
    if have is None:
        for child in dst.iterdir():  # debris of a killed sync or create: anything but the lock
            if child.name != "_featcache":
                rmtree(child)
        _write(dst / "zarr.json", _listing_no_split(root_bytes))  # the splits are listed last
    else:
        _refuse_other_store(src, dst, have)
    target = _Target(dst, root_bytes, have)
    chunk_keys, marker_keys, split_docs = {}, set(), {f"{r.name}/zarr.json" for r in readers}
    for reader in readers:
        for array in reader.arrays():
            for i in range(array.n_chunks):
                chunk_keys[_rel(src.path, array.chunk_file(i))] = (array, i)
                marker_keys.add(_rel(src.path, array.marker(i)))
    files = _files(src.path)
    done = {r.name for r in readers if _read(dst / r.name / "zarr.json") == _read(src.path / r.name / "zarr.json")}
    todo = [r.name for r in readers if r.name not in done]
    if have is not None and todo:  # files of another extraction (other chunking) the copy would not overwrite
        keep, under = set(files), tuple(p for name in todo for p in (f"{name}/", f"_featcache/{name}/"))
        for key in _files(dst):
            if key.startswith(under) and key not in keep:
                target.remove(key)
    copied = 0
    for key in files:  # metadata, ids, labels, bookkeeping groups: before any chunk and marker
        if key == "zarr.json" or key in split_docs or key in chunk_keys or key in marker_keys:
            continue
        data = (src.path / key).read_bytes()
        if _read(dst / key) != data:
            target.write(key, data)
    for reader in readers:
        if reader.name in done:
            continue
        for key, (array, i) in chunk_keys.items():
            if array.split == reader.name:
                copied += _copy_chunk(src, array, i, target, key, lock)
        doc = (src.path / reader.name / "zarr.json").read_bytes()
        lock.check()
        target.write(f"{reader.name}/zarr.json", doc)  # complete: last
    if have != root_bytes or target.hidden:
        _write(dst / "zarr.json", root_bytes)
    changed = have is None or target.changed
    verdict = Layout(dst).verdict()
    if changed and _read(verdict) is not None:  # it judged what the destination held before
        rmtree(verdict.parent)
    return copied, target.nbytes, changed


class _Target:
    """The destination store's writes. The first change to a store that lists splits (one that another sync or an
    extraction completed) first rewrites its root listing no split, so that a kill from then on leaves it listed
    incomplete, never complete while it holds parts of two stores; the source's root, written last, lists them."""

    def __init__(self, path: Path | RemotePath, root_bytes: bytes, have: bytes | None):
        self.path, self.root_bytes = path, root_bytes
        self.listed = have is not None and bool(json.loads(have)["attributes"]["featcache"].get("splits"))
        self.hidden = self.changed = False
        self.nbytes = 0

    def _hide(self) -> None:
        if self.listed:
            _write(self.path / "zarr.json", _listing_no_split(self.root_bytes))
            self.listed, self.hidden = False, True
        self.changed = True

    def write(self, key: str, data: bytes) -> None:
        self._hide()
        _write(self.path / key, data)
        self.nbytes += len(data)

    def remove(self, key: str) -> None:
        self._hide()
        (self.path / key).unlink(missing_ok=True)


def _listing_no_split(root_doc: bytes) -> bytes:
    """The root ``zarr.json`` with an empty ``splits``: until the copy ends, readers find no split to read."""
    doc = json.loads(root_doc)
    doc["attributes"]["featcache"]["splits"] = []
    return json.dumps(doc).encode()


def _rel(root: Path | RemotePath, path: Path | RemotePath) -> str:
    return path.relative_to(root).as_posix()


def _refuse_other_store(src: Store, dst: Path | RemotePath, have: bytes) -> None:
    try:
        prov = parse(Provenance, json.loads(have).get("attributes", {}).get("featcache"), f"{dst}: provenance")
    except (ValueError, AttributeError, StoreError):
        raise StoreError(f"sync: {dst} exists but is not a featcache store; move it away or sync elsewhere") from None
    diff = identity_diff(prov.identity(), src.provenance.identity())
    if diff:
        raise StoreMismatchError(
            f"sync: {dst} holds a store made otherwise ({', '.join(diff)} differ from {src.path}); delete it or "
            "sync to another cache"
        )


def _copy_chunk(src: Store, array, i: int, target: _Target, key: str, lock) -> int:
    """Copy chunk ``i`` of ``array`` and then its marker, unless both are there already; 1 if copied, else 0."""
    marker_key = _rel(src.path, array.marker(i))
    marker = _source(src, array, i, array.marker(i), "has no marker (it was never completely written)")
    dst = target.path / key
    size = array.chunk_rows * array.dim * array.dtype.itemsize
    if _read(target.path / marker_key) == marker and _size(dst) == (size if array.mmap else _size(array.chunk_file(i))):
        return 0
    data = _source(src, array, i, array.chunk_file(i), "is missing")
    if array.mmap and len(data) != size:
        raise _damaged(src, array, i, f"has {len(data)} bytes, want {size}")
    a, b = array.bounds(i)
    if array.mmap:
        block = np.frombuffer(data, dtype=array.dtype, count=(b - a) * array.dim)
    else:
        try:
            block = np.ascontiguousarray(array._chunk(i))
        except (ValueError, RuntimeError, TypeError) as e:  # zarr's codecs raise these on damaged bytes
            raise _damaged(src, array, i, f"cannot be decoded ({type(e).__name__})") from None
    if hashlib.sha256(block.tobytes()).hexdigest() != _marker_of(src, array, i).sha256:
        raise _damaged(src, array, i, "does not match its checksum")
    target.write(key, data)
    back = read_chunk_bytes(dst, np.dtype(np.uint8), len(data))
    if hashlib.sha256(back.tobytes()).hexdigest() != hashlib.sha256(data).hexdigest():
        raise StoreError(f"sync: {dst} read back differently from what was written; check the destination")
    lock.check()  # a sync that lost its lock must not mark chunks
    target.write(marker_key, marker)
    return 1


def _source(src: Store, array, i: int, path: Path | RemotePath, missing: str) -> bytes:
    """A source chunk's file or marker; a missing one is a damaged source, not an unwritable destination."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _damaged(src, array, i, missing) from None


def _damaged(src: Store, array, i: int, why: str) -> StoreError:
    return StoreError(
        f"sync: chunk {i} of {array.chunk_file(i)} {why}; run `featcache verify {src.path}` and repair the source first"
    )


def _marker_of(src: Store, array, i: int) -> ChunkMarker:
    doc = read_marker(array.marker(i), src.version)
    return parse(ChunkMarker, doc, str(array.marker(i)))


def _size(path: Path | RemotePath) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
