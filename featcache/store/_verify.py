"""Verifying stores: layout, markers, chunk sizes (cheap); checksums, NaN/Inf, ids and labels (deep); verdicts.

Mixed into the readers of :mod:`featcache.store._reader` (:class:`FeatureArray`, :class:`SplitReader`,
:class:`Store`), whose attributes and row access these checks use; ``featcache verify``, ``extract --repair`` and
the writer's completion (``finalize``) call them.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from ..errors import FeatcacheError, StoreError
from ._format import (
    CHUNK_KEY_ENCODING,
    CHUNK_KEYS,
    ensure_groups,
    group_doc,
    open_array,
    sha256_ids,
    sha256_labels,
    write_json_atomic,
)

__all__ = ["ArrayChecks", "SplitChecks", "StoreChecks"]


class ArrayChecks:
    """The checks of one feature array (mixed into :class:`~featcache.store.FeatureArray`)."""

    def _file_ok(self, i: int, sizes: dict[str, int] | None = None) -> bool:
        f = self.chunk_file(i)
        want = self.chunk_rows * self.dim * self.dtype.itemsize
        if sizes is not None:  # object storage: every chunk's size from one listing (see _remote_read)
            return str(f) in sizes and (not self.mmap or sizes[str(f)] == want)
        return f.is_file() and (not self.mmap or f.stat().st_size == want)

    def _sizes(self) -> dict[str, int] | None:
        return self.remote_sizes() if self.remote else None

    def _array_problems(self) -> list[str]:
        # the zarr view of the array must agree with the split metadata, or zarr readers see other rows; and its
        # chunk keys must be the layout's, or the chunk files read here are not the array's
        where = self.layout.array_dir(self.split, self.view_index)
        try:
            array = open_array(where, mode="r")
        except FeatcacheError:
            raise
        except (OSError, ValueError, KeyError, TypeError):
            return [f"{where / 'zarr.json'} is missing or unreadable"]
        shape, chunks = list(array.shape), list(array.chunks)
        if self.view_index is None:
            ok = shape == [self.rows, self.dim] and chunks == [self.chunk_rows, self.dim]
        else:  # views may be allocated beyond the complete ones
            ok = len(shape) == 3 and shape[0] > self.view_index and shape[1:] == [self.rows, self.dim]
            ok = ok and chunks == [1, self.chunk_rows, self.dim]
        problems = []
        if not ok or array.dtype != np.dtype(self.meta.dtype):
            got = f"{array.dtype} {shape} in chunks {chunks}"
            problems.append(
                f"{self.label} array is {got}, split metadata says {self.meta.dtype} ({self.rows}, {self.dim})"
            )
        if getattr(array.metadata, "chunk_key_encoding", None) != CHUNK_KEYS:
            problems.append(f"{self.label} array does not name its chunk files c/<i>/0 ({CHUNK_KEY_ENCODING})")
        return problems

    def cheap_problems(self) -> list[str]:
        """Checks that read no feature bytes: layout, markers, chunk files of the right size."""
        problems = self._array_problems()
        if self.n_chunks != -(-self.rows // self.chunk_rows):
            problems.append(f"n_chunks {self.n_chunks} does not cover {self.rows} rows in chunks of {self.chunk_rows}")
        marks = self.markers()
        missing = [i for i in range(self.n_chunks) if i not in marks]
        if missing:
            problems.append(
                f"{self.label}: {len(missing)} of {self.n_chunks} chunks not written (first: {missing[:5]})"
            )
        sizes = self._sizes()
        for i, mark in marks.items():
            a, b = self.bounds(i)
            if mark is None:
                problems.append(f"marker {self.marker(i)} is malformed or not for {b - a} rows")
            if not self._file_ok(i, sizes):
                f = self.chunk_file(i)
                want = self.chunk_rows * self.dim * self.dtype.itemsize
                if sizes is not None:
                    has = f"has {sizes[str(f)]} bytes" if str(f) in sizes else "is missing"
                else:
                    has = f"has {f.stat().st_size} bytes" if f.is_file() else "is missing"
                problems.append(f"chunk file {f} {has}, want {want} bytes")
        return problems

    def bad_chunks(self, content_only: bool = False) -> dict[int, str]:
        """Chunks that fail verification (missing, wrong size, checksum, NaN/Inf), with the reason.

        With ``content_only``, only checksum and NaN/Inf failures of chunks that pass :meth:`cheap_problems`
        (which reports the others).
        """
        bad: dict[int, str] = {}
        marks = self.markers()
        sizes = self._sizes()
        for i in range(self.n_chunks):
            mark = marks.get(i)
            a, b = self.bounds(i)
            if i not in marks:
                bad[i] = "not written"
            elif mark is None:
                bad[i] = f"marker {self.marker(i)} is malformed"
            elif not self._file_ok(i, sizes):
                bad[i] = f"chunk file {self.chunk_file(i)} is missing or of the wrong size"
            else:
                block = np.ascontiguousarray(self._chunk(i)[: b - a])
                why = []
                if hashlib.sha256(block.tobytes()).hexdigest() != mark.sha256:
                    why.append(f"chunk {i} ({self.chunk_file(i)}) does not match its checksum")
                if not np.isfinite(block).all():
                    why.append(f"chunk {i} holds NaN or Inf")
                if why:
                    bad[i] = "; ".join(why)
                self._chunks.pop(i, None)  # verification streams: do not keep every chunk mapped
                continue
            if content_only:
                del bad[i]
        return bad


class SplitChecks:
    """The checks of one split (mixed into :class:`~featcache.store.SplitReader`)."""

    def deep_problems(self) -> list[str]:
        """Hash every chunk of every array, scan for NaN/Inf, check ids/labels hashes and skipped rows."""
        problems = []
        if self.complete and self.skipped() != sorted(self.meta.skipped_rows):
            problems.append("skipped_rows differ from those of the chunk markers")
        for array in self.arrays():
            problems += list(array.bad_chunks(content_only=True).values())
        for what, digest, want in (
            ("ids", lambda: sha256_ids(self.ids), self.meta.ids_sha256),
            ("labels", lambda: sha256_labels(self.labels), self.meta.labels_sha256),
        ):
            try:
                if digest() != want:
                    problems.append(f"{what} do not match {what}_sha256")
            except (OSError, ValueError) as e:
                problems.append(f"{what} unreadable ({type(e).__name__}: {e})")
        return problems

    def all_cheap_problems(self) -> list[str]:
        return [p for a in self.arrays() for p in a.cheap_problems()]


class StoreChecks:
    """``featcache verify`` of a whole store and its recorded verdict (mixed into :class:`~featcache.store.Store`)."""

    def refuse_damaged(self) -> None:
        """Raise when the last ``featcache verify`` found the store damaged: no training on bad chunks.

        Raises:
            StoreError: names the store, the verdict's first problem and ``--repair``.
        """
        verdict = self.last_verdict()
        if verdict is not None and verdict.get("status", "ok" if verdict.get("ok") else "damaged") == "damaged":
            first = (verdict.get("problems") or ["?"])[0]
            raise StoreError(
                f"store {self.path} failed `featcache verify` at {verdict.get('at', '?')} ({first}); re-extract its "
                "damaged chunks with `featcache extract --repair` and the options that made it, then verify it again"
            )

    def verify(self, deep: bool = True, record: bool = True) -> list[str]:
        """Every problem found, as ``'<split>: <problem>'``; empty when the store is sound.

        With ``record`` (and a writable store) the verdict is kept in the store, so ``ls`` can show a
        damaged store as damaged; a read-only store is verified all the same. The verdict's ``status`` is
        ``ok``, ``damaged``, or ``incomplete`` when a split is not marked complete (or none exists yet): an
        extraction still running or interrupted, which the next extract finishes and which clears the verdict.
        """
        problems, incomplete = [], not self.splits
        for name in self.splits:
            try:
                reader = self.split(name, require_complete=False)
            except StoreError as e:
                problems.append(str(e))
                continue
            found = reader.all_cheap_problems() + (reader.deep_problems() if deep else [])
            if not reader.complete:
                found.insert(0, "not marked complete")
                incomplete = True
            problems += [f"{name}: {p}" for p in dict.fromkeys(found)]
        if not self.splits:
            problems.append("store has no splits")
        if record and self.version >= 2:
            self._record_verdict(problems, deep, "incomplete" if incomplete else "damaged" if problems else "ok")
        return problems

    def _record_verdict(self, problems: list[str], deep: bool, status: str) -> None:
        verdict = {"featcache_verify": {"ok": not problems, "status": status, "deep": deep, "problems": problems[:20],
                                        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}  # fmt: skip
        try:
            ensure_groups(self.path, self.layout.verdict().parent.parent)
            self.layout.verdict().parent.mkdir(exist_ok=True)
            write_json_atomic(self.layout.verdict(), group_doc(verdict))
        except OSError:
            pass  # a read-only cache: the verdict was printed, it just is not remembered

    def last_verdict(self) -> dict | None:
        """What the last ``verify`` found (``ok``, ``problems``, ``at``), or None if never verified."""
        try:
            doc = json.loads(self.layout.verdict().read_text())
            return doc["attributes"]["featcache_verify"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
