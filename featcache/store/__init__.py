"""The feature store: the one contract between ``extract`` and ``probe``. Format version 1.

A store holds one backbone's features of one dataset under one preprocessing. It is a zarr v3
group on a local (or shared) filesystem, ``<cache>/<dataset>/<name>.zarr``::

    zarr.json              group; attrs["featcache"] = provenance (below)
    <split>/               one group per split ("train", "test", "val", "all")
      zarr.json            attrs["featcache_split"] = split metadata (below)
      features/            (rows, dim) float16|float32, chunks (chunk_rows, dim), no compression by
                           default: codecs = [bytes(little)], so chunk file ``c/<i>/0`` is the raw
                           C-order block of rows [i*chunk_rows, (i+1)*chunk_rows), the last one
                           zero-padded to full size; it can be memory-mapped.
      labels/              int64 (rows,), written whole when the split is created
      ids/                 string (rows,), stable sample ids in dataset order, written whole
    _featcache/            bookkeeping, not part of the zarr hierarchy
      lock                 present while a writer holds the store (see featcache.lock)
      <split>/<i>.json     chunk i is written, fsynced and read back: {"rows", "sha256", "skipped"}

Provenance (``attrs["featcache"]``): ``format_version``, ``created_at``, ``software`` (featcache, torch,
torchvision, zarr, numpy, python versions), ``dataset`` {name, format}, ``checkpoint`` {name, arch,
sha256, path, ema}, ``layer``, ``feature_dim``, ``dtype``, ``precision``, ``transform`` (the preset's
parameters), ``preprocess`` {backend, device}, ``splits`` (names). Everything but ``created_at`` is the
store's *identity*: resuming with a different identity is refused.

Split metadata (``attrs["featcache_split"]``): ``rows``, ``dim``, ``dtype``, ``chunk_rows``, ``n_chunks``,
``compression``, ``fingerprint`` (of the dataset split), ``ids_sha256``, ``labels_sha256``, ``classes``,
``complete`` (false until every chunk is written and verified; set last, after an fsync of the data),
``completed_at``, ``skipped_rows`` (rows whose image could not be decoded; their features are zeros
and readers drop them).

Writers only ever write whole chunks, and each chunk has its own marker, so several processes
may each own disjoint chunk ranges of one split. Readers need numpy and zarr only.

Write order. A writer holds the lock and writes in this order, so that a kill at any moment
(SIGKILL, power loss) leaves a store that the same command resumes to the same bytes:

1. The root ``zarr.json`` first. A store directory without it holds only the debris of a killed
   create or ``--overwrite`` (which deletes the root ``zarr.json`` before anything else); the
   next writer removes that debris (the lock aside).
2. A split: its group, then its arrays (labels and ids whole), fsynced, then its ``featcache_split``
   attrs, then its name in the root ``splits``. A split directory without those attrs was killed
   while being created and is created again; a split with attrs but missing from ``splits`` is added.
3. Chunk i: the chunk file (zarr writes ``<name>.<uuid>.partial`` and renames it), fsynced and
   read back, then its marker. A chunk without a marker is written again.
4. ``complete``: last, once every marker is present and every chunk file has its size.

Leftover ``*.partial`` files (zarr) and ``_featcache/**/.*.tmp`` files (our JSON, written to a temp
file, fsynced and renamed) are removed by the next writer. An OSError while writing (disk full,
read-only or missing cache directory) becomes a one-line :class:`StoreError`; the store stays
resumable.
"""

from ._format import CHUNK_BYTES, FORMAT_VERSION, chunk_rows_for, identity_diff, sha256_ids, sha256_labels, store_path
from ._reader import SplitReader, Store, list_stores, open_store
from ._writer import SplitData, SplitWriter, StoreWriter

__all__ = [
    "FORMAT_VERSION",
    "CHUNK_BYTES",
    "SplitData",
    "StoreWriter",
    "SplitWriter",
    "Store",
    "SplitReader",
    "open_store",
    "list_stores",
    "identity_diff",
    "sha256_ids",
    "sha256_labels",
    "chunk_rows_for",
    "store_path",
]
