"""The feature store: the one contract between ``extract`` and ``probe``. Format version 2.

A store holds one backbone's features of one dataset under one preprocessing. It is a zarr v3
group on a local (or shared) filesystem or on object storage, ``<cache>/<dataset>/<name>.zarr``::

    zarr.json              group; attrs["featcache"] = Provenance (typed, see _schema.py)
    <split>/               one group per split ("train", "test", "val", "all")
      zarr.json            attrs["featcache_split"] = SplitMeta
      features/            (rows, dim) float16|float32, dims (row, feature), chunks (chunk_rows, dim), no
                           compression by default: codecs = [bytes(little)] and chunk keys zarr's "default"
                           encoding with separator "/" (given explicitly), so chunk file ``c/<i>/0`` is the
                           raw C-order block of rows [i*chunk_rows, (i+1)*chunk_rows), the last one zero-padded
                           to full size; it can be memory-mapped. The evaluation view (centre crop).
      views/               (allocated views, rows, dim), dims (view, row, feature), chunks (1, chunk_rows, dim):
                           augmented views of the train split (``extract --views K``); chunk file
                           ``c/<k>/<i>/0`` is view k's block i, raw like the features'. In a complete split
                           views 0..SplitMeta.views.count-1 are complete; view k of a row is a pure function of
                           (sample id, k, views seed), so every checkpoint's store holds the same crops.
      labels/              int64 (rows,), written whole when the split is created
      ids/                 string (rows,), stable sample ids in dataset order, written whole
    _featcache/            bookkeeping, as zarr groups so that plain zarr lists the store without warnings
      lock                 a file, present while a writer holds the store (see _lock.py)
      <split>/features/<i>/zarr.json   chunk i of the features is written, fsynced and read back: a group whose
                                       attrs["featcache_chunk"] = ChunkMarker {rows, sha256, skipped}
      <split>/views/<k>/<i>/zarr.json  the same for chunk i of view k
      verify/zarr.json     attrs["featcache_verify"]: the last ``featcache verify`` verdict (ok, status: ok,
                           damaged or incomplete, problems, at); removed when an extraction or a repair
                           completes a split, since it judged what was there before

The typed records (:class:`Provenance`, :class:`SplitMeta`, :class:`ViewsMeta`, :class:`ChunkMarker`) are the
schema; writer and readers use them, never raw keys. Provenance holds the dataset (name, format, limit),
the checkpoint (name, arch, sha256, path, ema, stripped prefix, ignored keys), layer and pooling, feature_dim,
dtype, precision, the evaluation transform's parameters, the preprocessing backend and device, the compute
device and software versions: all of it but ``format_version``, ``created_at`` and ``splits`` is the store's
*identity*; resuming with a different identity is refused, and so is concatenating stores whose samples,
preprocessing or views differ. SplitMeta holds rows, dim, dtype, chunk_rows, n_chunks, compression, the dataset
split's fingerprint, ids/labels hashes, classes, ``complete`` (false until every features chunk is written and
verified; set last), ``skipped_rows`` (undecodable images: zero features, dropped by readers) and ``views``
(seed, the augmentation's parameters, count of complete views).

Version 1 (no views; markers were plain JSON files ``_featcache/<split>/<i>.json``) is read, not written:
extending a v1 store asks for ``--overwrite``.

Writers only ever write whole chunks, and each chunk has its own marker, so several processes
may each own disjoint chunk ranges of one split. Readers need numpy and zarr only, and keep a bounded number
of chunk files memory-mapped (``_reader.MAPPED_BYTES``, ``MAX_MAPS``).

Write order. A writer holds the lock and writes in this order, so that a kill at any moment
(SIGKILL, power loss) leaves a store that the same command resumes to the same bytes:

1. The root ``zarr.json`` first. A store directory without it holds only the debris of a killed
   create or ``--overwrite`` (which deletes the root ``zarr.json`` before anything else); the
   next writer removes that debris (the lock aside).
2. A split: its group, then its arrays (labels and ids whole), fsynced, then its ``featcache_split``
   attrs, then its name in the root ``splits``. A split directory without those attrs was killed
   while being created and is created again; a split with attrs but missing from ``splits`` is added.
3. Views: the views seed and augmentation go into the split attrs (count 0) before the ``views`` array is
   created or grown, so a resumed run makes the same crops.
4. Chunk i of an array: the chunk file (zarr writes ``<name>.<uuid>.partial`` and renames it), fsynced and
   read back, then its marker. A chunk without a marker is written again.
5. ``complete`` (and the views count): last, once every marker of the features and of every view is present
   and every chunk file has its size.

A repair (``extract --repair``) first marks the split incomplete, keeping its views count, then removes the
markers of the chunks that fail verification: a kill from there leaves a store readers refuse and the next
extract finishes, never a smaller one. Temp files are removed only by a writer with no live shard beside it.

Leftover ``*.partial`` files (zarr) and ``.<name>.<pid>.tmp`` files (our JSON, written to a temp
file, fsynced and renamed) are removed by the next writer. An OSError while writing (disk full,
read-only or missing cache directory) becomes a one-line :class:`StoreError`; the store stays
resumable.

Modules: ``_format`` (the layout: paths, chunk keys, constants, durable JSON writes), ``_schema`` (the typed
records), ``_store_writer`` (:class:`StoreWriter`: create or resume, lock, shards), ``_writer`` (:class:`SplitWriter`
and :class:`ArrayWriter`: splits, views, whole chunks, completion), ``_reader`` (:class:`Store`,
:class:`SplitReader`, :class:`FeatureArray`: memory-mapped rows), ``_verify`` (their checks and ``verify``'s
verdict, mixed into the readers), ``_lock`` and ``_catalog`` (``ls`` and ``--stores`` resolution), ``_sync``
(``featcache sync``).

On object storage. A store may live under an fsspec URL (``s3://bucket/cache/<dataset>/<name>.zarr``, see
:mod:`featcache.locations`) with the same layout, keys and bytes, and the same guarantees in object-store terms:
every file is one whole-object PUT (a reader sees the old object or the whole new one; nothing is fsynced or
renamed, and no temp files are left), so a chunk object is complete before its marker is written, and a split's
``complete`` after every marker. The lock is a lease object (``_lease``: conditional create, heartbeat, takeover of
a gone holder), per shard as on disk. Readers fetch byte ranges of chunk objects in parallel instead of mapping
files (``_remote_read``).
"""

from ._catalog import StoreSummary, already_complete, list_stores, resolve_stores
from ._format import CHUNK_BYTES, FORMAT_VERSION, chunk_rows_for, sha256_ids, sha256_labels, store_path
from ._lock import StoreLock, describe_lock
from ._reader import FeatureArray, SplitReader, Store, open_store
from ._schema import (
    CheckpointRef,
    ChunkMarker,
    ComputeRef,
    DatasetRef,
    PreprocessRef,
    Provenance,
    Software,
    SplitMeta,
    ViewsMeta,
    identity_diff,
)
from ._store_writer import StoreWriter
from ._sync import SyncResult, sync_stores
from ._writer import ArrayWriter, SplitData, SplitWriter, planned_meta

__all__ = [
    "FORMAT_VERSION",
    "CHUNK_BYTES",
    "Provenance",
    "Software",
    "DatasetRef",
    "CheckpointRef",
    "PreprocessRef",
    "ComputeRef",
    "SplitMeta",
    "ViewsMeta",
    "ChunkMarker",
    "SplitData",
    "StoreWriter",
    "SplitWriter",
    "ArrayWriter",
    "already_complete",
    "planned_meta",
    "Store",
    "StoreSummary",
    "SplitReader",
    "FeatureArray",
    "StoreLock",
    "describe_lock",
    "open_store",
    "list_stores",
    "resolve_stores",
    "identity_diff",
    "sha256_ids",
    "sha256_labels",
    "chunk_rows_for",
    "store_path",
    "SyncResult",
    "sync_stores",
]
