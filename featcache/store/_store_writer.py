"""Writing stores: create one or reopen it to resume, hold its lock, coordinate shards (see :mod:`featcache.store`).

The splits, their arrays and chunks are written by :class:`~featcache.store._writer.SplitWriter`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import zarr

from ..errors import StoreError, StoreLockedError, StoreMismatchError
from ..locations import RemotePath, location, zarr_store
from ._format import (
    FORMAT_VERSION,
    Layout,
    check_version,
    chunk_rows_for,
    disk_errors,
    ensure_groups,
    fsync,
    now,
    open_group,
    remove_partials,
    rmtree,
)
from ._lock import describe_lock, lock_for
from ._schema import Provenance, identity_diff, parse
from ._writer import SplitData, SplitWriter

__all__ = ["SHARD_WAIT", "StoreWriter"]

SHARD_WAIT = 300.0  # seconds a shard waits for another shard's short hold of the store lock


class StoreWriter:
    """Creates a store, or reopens an incomplete one to resume it; holds the store's lock.

    Args:
        path: the ``.zarr`` directory, or its object-store URL (see :mod:`featcache.locations`).
        provenance: the store's identity; ``format_version``, ``created_at`` and ``splits`` are the store's.
        overwrite: delete an existing store (after taking its lock) and start over.

    Raises:
        StoreLockedError: another live process writes this store.
        StoreMismatchError: the store exists with another identity (lists the differing keys).
        StoreError: the store exists but is not a featcache store, or is of another format version; or the
            filesystem refused a write (disk full, unwritable cache directory).
    """

    def __init__(
        self,
        path: Path | RemotePath,
        provenance: Provenance,
        *,
        overwrite: bool = False,
        shard: tuple[int, int] | None = None,
        wait: float = SHARD_WAIT,
    ):
        self.path = location(path)
        self.layout = Layout(self.path)
        self.shard, self.wait = shard, wait
        self.main = lock_for(self.layout.lock, f"store {self.path}")
        # chunk markers are committed under ``lock``: the store's lock, or a shard's own lock
        self.lock = self.main if shard is None else lock_for(self.layout.shard_lock(*shard), self._shard_name())
        if shard is not None and overwrite:
            raise StoreError(f"{self._shard_name()}: --overwrite cannot be combined with --shard; overwrite the "
                             "store once without --shard, then run the shards")  # fmt: skip
        with disk_errors(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        try:
            with disk_errors(self.path), self.exclusive():
                if shard is None:  # before touching anything: a live shard's files are its own
                    self._refuse_live_shards()
                self._open(provenance, overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _shard_name(self) -> str:
        return f"shard {self.shard[0]}/{self.shard[1]} of store {self.path}"

    @contextlib.contextmanager
    def exclusive(self):
        """Hold the store's own lock for the body: what creates or changes metadata (splits, views, ``complete``).

        A plain writer holds it throughout; a shard takes it for such sections only (waiting up to ``wait``
        seconds for another shard's), and writes its chunks under its shard lock.
        """
        if self.shard is None:
            yield
            return
        with disk_errors(self.path):
            self.main.acquire(wait=self.wait)
        try:
            yield
        finally:
            self.main.release()

    def _live_shards(self) -> list[tuple[Path, dict]]:
        """The shard locks of other live writers (this writer's own aside), with their holders."""
        found = []
        for path in self.layout.shard_locks():
            holder = describe_lock(path)
            if holder is not None and not holder["stale"] and path != self.lock.path:
                found.append((path, holder))
        return found

    def _refuse_live_shards(self) -> None:
        for path, holder in self._live_shards():
            raise StoreLockedError(
                f"store {self.path} is being written by {path.name.removeprefix('lock-')} ({holder['text']}); "
                "wait for the shards to finish, then rerun without --shard to fill what is missing"
            )

    def _open(self, provenance: Provenance, overwrite: bool) -> None:
        meta = self.path / "zarr.json"
        if overwrite and meta.exists():
            meta.unlink()  # first: a kill from here on leaves debris that the next open removes
            fsync(self.path)
        if not meta.exists():
            self._remove_debris()
            self.prov = dataclasses.replace(provenance, format_version=FORMAT_VERSION, created_at=now(), splits=())
            self.group = zarr.create_group(zarr_store(self.path), attributes={"featcache": self.prov.to_dict()})
            ensure_groups(self.path, self.layout.books)
        else:
            self.group = open_group(self.path, mode="r+")
            doc = self.group.attrs.get("featcache")
            if not isinstance(doc, dict):
                raise StoreError(f"{self.path} exists but is not a featcache store; pick another --store-name")
            version = check_version(self.path, doc)
            if version != FORMAT_VERSION:
                raise StoreError(
                    f"store {self.path} is in format v{version}, which this featcache reads but does not extend; "
                    f"pass --overwrite to write it again in v{FORMAT_VERSION}, or --store-name for a new store"
                )
            old = parse(Provenance, doc, f"{self.path}: provenance")
            diff = identity_diff(old.identity(), provenance.identity())
            if diff:
                raise StoreMismatchError(
                    f"store {self.path} exists with different {', '.join(diff)}; pass --store-name to write a "
                    "new store, or --overwrite to replace it"
                )
            self.prov = old
            # Temp files are removed only with no other live writer: another shard (another torchrun rank)
            # may be between writing a chunk's temp file and renaming it into place.
            if not self._live_shards():
                remove_partials(self.path)
        fsync(self.path)

    def _remove_debris(self) -> None:
        # No root zarr.json: anything here but the lock was left by a killed create or --overwrite.
        if (self.path / ".zgroup").exists() or (self.path / ".zarray").exists():
            raise StoreError(f"{self.path} is a zarr v2 store, not a featcache store; pick another --store-name")
        for child in self.path.iterdir():
            if child.name != self.layout.books.name:
                rmtree(child)
        for child in self.layout.books.iterdir():
            if not child.name.startswith(self.layout.lock.name):
                rmtree(child)

    def forget_verdict(self) -> None:
        """Remove the last ``featcache verify`` verdict: it judged what the store held before this writer."""
        with disk_errors(self.path):
            if self.layout.verdict().exists():
                rmtree(self.layout.verdict().parent)

    def set_provenance(self, prov: Provenance) -> None:
        self.prov = prov
        self.group.attrs["featcache"] = prov.to_dict()
        fsync(self.path / "zarr.json")

    def split(
        self, data: SplitData, dim: int, dtype: str, *, chunk_rows: int | None = None, compression: str = "none"
    ) -> SplitWriter:
        """Create the split (writing ids and labels whole) or reopen it for resuming.

        ``chunk_rows`` (default: about CHUNK_BYTES per chunk) applies to a new split only, capped at its row count.
        """
        rows = len(data.ids)
        chunk_rows = max(1, min(chunk_rows, rows)) if chunk_rows else chunk_rows_for(dim, dtype, rows)
        return SplitWriter(self, data, dim, dtype, chunk_rows, compression)

    def close(self) -> None:
        self.lock.release()
        if self.lock is not self.main:
            self.main.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
