"""Reading feature arrays on object storage: byte ranges of chunk objects, fetched in parallel.

Mixed into :class:`~featcache.store.FeatureArray`. An uncompressed chunk object is the raw C-order block of its rows,
so rows [a, b) of chunk i are bytes [a * row_bytes, b * row_bytes) of object ``c/<i>/0``: :meth:`take_remote` turns
the rows a caller asks for into such ranges (runs of rows joined across gaps of at most :data:`MERGE_GAP` bytes, cut
into parts of at most :data:`PART_BYTES`) and fetches them concurrently (fsspec's ``cat_ranges``), at most
:data:`WINDOW_BYTES` at a time (or as much as the caller's ``out`` holds, when less; always at least one part), so a
take holds at most that much besides ``out``. The streamed probe reads a buffer's blocks on threads
(``FeatureArray.parallel_reads``) and the next buffer on a background thread (see :mod:`featcache.feed_stream`):
blocks in parallel, and ahead. Markers and chunk sizes come from one listing and parallel GETs, not one round trip
per chunk. Compressed stores are decoded by zarr through its fsspec store, a whole chunk at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..locations import remote_errors

if TYPE_CHECKING:
    from ..locations import RemotePath

__all__ = ["MERGE_GAP", "PART_BYTES", "WINDOW_BYTES", "RemoteReads", "row_ranges"]

MERGE_GAP = 64 * 2**10  # bytes of unwanted rows read rather than start another request (~ one round trip's worth)
PART_BYTES = 4 * 2**20  # a larger range is fetched as parts of this size, concurrently (as S3 recommends)
WINDOW_BYTES = 64 * 2**20  # bytes one take fetches at a time at most (unless one range alone is larger)


def row_ranges(rows: np.ndarray, gap_rows: int) -> list[tuple[int, int]]:
    """Sorted distinct ``rows`` as [start, stop) runs, runs closer than ``gap_rows`` missing rows joined."""
    rows = np.unique(rows)
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) > gap_rows + 1)
    starts = np.concatenate([[rows[0]], rows[breaks + 1]])
    stops = np.concatenate([rows[breaks], [rows[-1]]]) + 1
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


class RemoteReads:
    """Row reads of a feature array whose chunks are objects (``self.remote``); see the module docstring."""

    def fetch_chunk(self, i: int) -> np.ndarray:
        """Chunk ``i`` whole, as a flat read-only array (verification and sync)."""
        return np.frombuffer(self.chunk_file(i).read_bytes(), dtype=self.dtype)

    def take_remote(self, idx: np.ndarray, chunk: np.ndarray, groups: list[np.ndarray], out: np.ndarray) -> np.ndarray:
        """Rows ``idx`` into ``out``, ``groups`` holding the positions of each chunk's rows (see :meth:`take`)."""
        row_bytes = self.dim * self.dtype.itemsize
        gap_rows = MERGE_GAP // max(1, row_bytes)
        part_rows = max(1, PART_BYTES // max(1, row_bytes))
        requests = []  # (chunk, first row, stop row, positions in idx of the rows it serves)
        for group in groups:
            if not len(group):
                continue
            c = int(chunk[group[0]])
            local = idx[group] - c * self.chunk_rows
            for a, b in row_ranges(local, gap_rows):
                for lo in range(a, b, part_rows):  # large ranges in parts fetched side by side
                    hi = min(b, lo + part_rows)
                    mine = (local >= lo) & (local < hi)
                    requests.append((c, lo, hi, group[mine], local[mine]))
        cap = min(WINDOW_BYTES, max(out.nbytes, 1))
        batch, size = [], 0
        for r in requests:
            nbytes = (r[2] - r[1]) * row_bytes
            if batch and size + nbytes > cap:
                self._fetch(batch, out, row_bytes)
                batch, size = [], 0
            batch.append(r)
            size += nbytes
        if batch:
            self._fetch(batch, out, row_bytes)
        return out

    def _fetch(self, batch: list, out: np.ndarray, row_bytes: int) -> None:
        files: list[RemotePath] = [self.chunk_file(c) for c, *_ in batch]
        fs = files[0].fs
        with remote_errors(files[0]):
            blobs = fs.cat_ranges([f.key for f in files], [a * row_bytes for _, a, *_ in batch],
                                  [b * row_bytes for _, _, b, *_ in batch])  # fmt: skip
        for (_, a, b, positions, local), blob in zip(batch, blobs, strict=True):
            if isinstance(blob, BaseException):
                raise blob
            block = np.frombuffer(blob, dtype=self.dtype).reshape(b - a, self.dim)
            out[positions] = block[local - a]

    def remote_markers(self) -> dict[int, dict]:
        """The present chunk markers' fields by chunk index (``{}`` for an unreadable one), from one listing."""
        from ._format import marker_fields

        where = self.layout.marker_dir(self.split, self.view_index)
        keys = {self.marker(i).key: i for i in range(self.n_chunks)}
        found = [k for k in (f"{where.key}/{rel}" for rel in where.find()) if k in keys]
        if not found:
            return {}
        with remote_errors(where):
            blobs = where.fs.cat(found, on_error="return")
        out = {}
        for key, blob in blobs.items():
            if isinstance(blob, FileNotFoundError):
                continue
            out[keys[key]] = {} if isinstance(blob, BaseException) else marker_fields(blob, self.layout.version)
        return out

    def remote_sizes(self) -> dict[str, int]:
        """The size of every chunk object of this array, by its URL, from one listing."""
        prefix = self.chunk_file(0).parent.parent
        return {str(prefix / rel): int(info.get("size") or 0) for rel, info in _find_detail(prefix).items()}


def _find_detail(prefix: RemotePath) -> dict[str, dict]:
    with remote_errors(prefix):
        try:
            found = prefix.fs.find(prefix.key, detail=True)
        except FileNotFoundError:
            return {}
    n = len(prefix.key) + 1
    return {k[n:]: v for k, v in found.items() if k.startswith(prefix.key + "/")}
