"""Writing stores: create, resume, write whole chunks, mark complete (see :mod:`featcache.store`)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ..errors import StoreError, StoreIncompleteError, StoreMismatchError
from ..lock import StoreLock
from ._format import (
    FORMAT_VERSION,
    FP16_MAX,
    check_version,
    chunk_rows_for,
    disk_errors,
    fsync,
    fsync_tree,
    identity_diff,
    remove_partials,
    rmtree,
    sha256_ids,
    sha256_labels,
    write_json_atomic,
)
from ._reader import SplitReader


@dataclass(frozen=True)
class SplitData:
    """What a writer knows about a split before any feature is computed."""

    name: str
    ids: Sequence[str]
    labels: np.ndarray
    fingerprint: str
    classes: Sequence[str]


class StoreWriter:
    """Creates a store, or reopens an incomplete one to resume it; holds the store's lock.

    Args:
        path: the ``.zarr`` directory.
        provenance: the store's identity (see module docstring); ``format_version`` and
            ``created_at`` are filled in.
        overwrite: delete an existing store (after taking its lock) and start over.

    Raises:
        StoreLockedError: another live process writes this store.
        StoreMismatchError: the store exists with another identity (lists the differing keys).
        StoreError: the store exists but is not a featcache store, or is of a newer format; or the
            filesystem refused a write (disk full, unwritable cache directory).
    """

    def __init__(self, path: Path, provenance: dict, *, overwrite: bool = False):
        self.path = Path(path)
        self.prov = {**provenance, "format_version": FORMAT_VERSION}
        self.lock = StoreLock(self.path / "_featcache" / "lock", f"store {self.path}")
        with disk_errors(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        try:
            with disk_errors(self.path):
                self._open(overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, overwrite: bool) -> None:
        meta = self.path / "zarr.json"
        if overwrite and meta.exists():
            meta.unlink()  # first: a kill from here on leaves debris that the next open removes
            fsync(self.path)
        if not meta.exists():
            self._remove_debris()
            self.prov["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            self.group = zarr.create_group(self.path, attributes={"featcache": self.prov})
        else:
            self.group = zarr.open_group(self.path, mode="r+")
            old = self.group.attrs.get("featcache")
            if not isinstance(old, dict):
                raise StoreError(f"{self.path} exists but is not a featcache store; pick another --store-name")
            check_version(self.path, old)
            diff = identity_diff(old, self.prov)
            if diff:
                raise StoreMismatchError(
                    f"store {self.path} exists with different {', '.join(diff)}; pass --store-name to write a "
                    "new store, or --overwrite to replace it"
                )
            self.prov = old
            remove_partials(self.path)
        fsync(self.path)

    def _remove_debris(self) -> None:
        # No root zarr.json: anything here but the lock was left by a killed create or --overwrite.
        if (self.path / ".zgroup").exists() or (self.path / ".zarray").exists():
            raise StoreError(f"{self.path} is a zarr v2 store, not a featcache store; pick another --store-name")
        for child in self.path.iterdir():
            if child.name != "_featcache":
                rmtree(child)
        for child in (self.path / "_featcache").iterdir():
            if not child.name.startswith("lock"):
                rmtree(child)

    def split(
        self, data: SplitData, dim: int, dtype: str, *, chunk_rows: int | None = None, compression: str = "none"
    ) -> SplitWriter:
        """Create the split (writing ids and labels whole) or reopen it for resuming.

        ``chunk_rows`` (default: about CHUNK_BYTES per chunk) applies to a new split only.
        """
        return SplitWriter(self, data, dim, dtype, chunk_rows or chunk_rows_for(dim, dtype), compression)

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SplitWriter:
    """Writes whole feature chunks of one split; ``finalize`` marks it complete.

    Raises (every method):
        StoreError: the filesystem refused a write (disk full, read-only, ...); the store stays resumable.
    """

    def __init__(self, store: StoreWriter, data: SplitData, dim: int, dtype: str, chunk_rows: int, compression: str):
        self.store, self.name = store, data.name
        self.dir = store.path / data.name
        self.marks = store.path / "_featcache" / data.name
        rows = len(data.ids)
        meta = {
            "rows": rows,
            "dim": int(dim),
            "dtype": str(np.dtype(dtype)),
            "chunk_rows": int(chunk_rows),
            "n_chunks": -(-rows // chunk_rows),
            "compression": compression,
            "fingerprint": data.fingerprint,
            "ids_sha256": sha256_ids(data.ids),
            "labels_sha256": sha256_labels(data.labels),
            "classes": list(data.classes),
            "complete": False,
            "completed_at": None,
            "skipped_rows": [],
        }
        with disk_errors(store.path):
            self.marks.mkdir(parents=True, exist_ok=True)
            old = self._created_meta()
            if old is not None:
                # chunk_rows is layout, not identity: a reopened split keeps the one it was started with
                layout = ("chunk_rows", "n_chunks", "complete", "completed_at", "skipped_rows")
                diff = [k for k in meta if k not in layout and old.get(k) != meta[k]]
                if diff:
                    raise StoreMismatchError(
                        f"split '{self.name}' of store {store.path} was started with different {', '.join(diff)}; "
                        "pass --overwrite to start over"
                    )
                self.meta = old
                self.group = zarr.open_group(self.dir, mode="r+")
            else:
                self.meta = meta
                self.group = self._create(data, compression)
            self._list_in_store()
        self.features = self.group["features"]
        self.rows, self.chunk_rows, self.n_chunks = rows, int(self.meta["chunk_rows"]), int(self.meta["n_chunks"])

    def _created_meta(self) -> dict | None:
        """The split's metadata if it was created to the end (step 2 of the write order), else None."""
        if not (self.dir / "zarr.json").exists():
            return None
        meta = zarr.open_group(self.dir, mode="r").attrs.get("featcache_split")
        return dict(meta) if isinstance(meta, dict) else None

    def _create(self, data: SplitData, compression: str) -> zarr.Group:
        # A directory here is a creation that was killed: nothing in it is final, and no chunk
        # was written (chunks are only written once the split exists), so start it again.
        if self.dir.exists():
            rmtree(self.dir)
        for mark in self.marks.iterdir():
            rmtree(mark)
        rows, dim, chunk_rows = self.meta["rows"], self.meta["dim"], self.meta["chunk_rows"]
        group = self.store.group.create_group(data.name)
        compressors = None if compression == "none" else [zarr.codecs.ZstdCodec(level=3)]
        group.create_array(
            "features",
            shape=(rows, dim),
            chunks=(chunk_rows, dim),
            dtype=self.meta["dtype"],
            compressors=compressors,
            fill_value=0,
            config={"write_empty_chunks": True},
        )
        group.create_array("labels", data=np.asarray(data.labels, dtype="<i8"), chunks=(max(rows, 1),))
        ids = group.create_array("ids", shape=(rows,), dtype=str, chunks=(max(rows, 1),))
        ids[:] = np.asarray(list(data.ids), dtype=str)
        fsync_tree(self.dir)
        # the attrs make the split exist: written after its arrays are on disk
        group.attrs["featcache_split"] = self.meta
        fsync(self.dir / "zarr.json")
        fsync(self.dir)
        return group

    def _list_in_store(self) -> None:
        splits = list(self.store.prov.get("splits", []))
        if self.name not in splits:
            self.store.prov["splits"] = splits + [self.name]
            self.store.group.attrs["featcache"] = self.store.prov
            fsync(self.store.path / "zarr.json")

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.rows)

    def chunk_file(self, i: int) -> Path:
        return self.dir / "features" / "c" / str(i) / "0"

    def done(self, i: int) -> bool:
        return (self.marks / f"{i}.json").exists()

    def pending(self) -> list[int]:
        """Chunks that still have to be written (all of them for a fresh split)."""
        return [] if self.complete else [i for i in range(self.n_chunks) if not self.done(i)]

    def write_chunk(self, i: int, block: np.ndarray, skipped: Sequence[int] = ()) -> None:
        """Write chunk ``i`` whole, fsync it, read it back, then mark it done.

        Args:
            block: (rows of chunk i, dim) features, any float dtype; cast to the store dtype.
            skipped: absolute row indices in this chunk whose image could not be read.

        Raises:
            StoreError: wrong shape, NaN/Inf, values that overflow float16, or the disk refused the write.
            StoreLockedError: this process no longer holds the store's lock.
        """
        start, stop = self.bounds(i)
        if block.shape != (stop - start, self.meta["dim"]):
            raise StoreError(
                f"chunk {i} of {self.dir}: got shape {block.shape}, want {(stop - start, self.meta['dim'])}"
            )
        if not np.isfinite(block).all():
            raise StoreError(f"features of rows {start}-{stop} of {self.dir} contain NaN or Inf; check the checkpoint")
        dtype = np.dtype(self.meta["dtype"])
        if dtype == np.float16 and block.size and np.abs(block).max() > FP16_MAX:
            raise StoreError(
                f"features of rows {start}-{stop} reach {np.abs(block).max():.4g}, beyond float16's "
                f"{FP16_MAX:.0f}; rerun with --dtype float32 --overwrite"
            )
        block = np.ascontiguousarray(block, dtype=dtype.newbyteorder("<"))
        digest = hashlib.sha256(block.tobytes()).hexdigest()
        with disk_errors(self.store.path):
            self.features[start:stop] = block
            path = self.chunk_file(i)
            fsync(path)
            fsync(path.parent)  # zarr renamed the file into place: make the name durable too
            if self.meta["compression"] == "none":
                back = np.fromfile(path, dtype=block.dtype, count=block.size)
            else:
                back = np.ascontiguousarray(self.features[start:stop], dtype=block.dtype)
            if hashlib.sha256(back.tobytes()).hexdigest() != digest:
                raise StoreError(f"chunk {i} of {self.dir} read back differently from what was written; check the disk")
            self.store.lock.check()  # a writer that lost its lock must not mark chunks as its own
            write_json_atomic(
                self.marks / f"{i}.json",
                {"rows": stop - start, "sha256": digest, "skipped": sorted(int(r) for r in skipped)},
            )

    def finalize(self) -> None:
        """Mark the split complete once every chunk has its marker and its file has the right size.

        Raises:
            StoreIncompleteError: some chunks are not written yet (their indices are listed).
            StoreError: a chunk file is missing or of the wrong size, or the disk refused the write.
        """
        missing = [i for i in range(self.n_chunks) if not self.done(i)]
        if missing:
            raise StoreIncompleteError(f"split '{self.name}' of {self.store.path} misses chunks {missing[:10]}")
        skipped: list[int] = []
        for i in range(self.n_chunks):
            skipped += json.loads((self.marks / f"{i}.json").read_text())["skipped"]
        problems = SplitReader(self.store.path, self.name, self.meta).cheap_problems()
        if problems:
            raise StoreError(f"split '{self.name}' of {self.store.path}: {problems[0]}")
        self.store.lock.check()
        with disk_errors(self.store.path):
            meta = {**self.meta, "complete": True, "completed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            meta["skipped_rows"] = skipped
            # the flag goes last: zarr renames zarr.json into place; fsync it and its directory
            self.group.attrs["featcache_split"] = meta
            fsync(self.dir / "zarr.json")
            fsync(self.dir)
        self.meta = meta
