"""Build feature stores directly from arrays (no torch), for store, concat and probe tests and the benchmarks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import zarr

from ..store import Provenance, SplitData, StoreWriter, sha256_ids, sha256_labels

__all__ = ["provenance", "make_store", "make_v1_store"]


def provenance(name: str = "ckpt", dim: int = 8, **over) -> Provenance:
    """A store identity; ``over`` replaces top-level fields, and a dict for a record merges into it."""
    prov = {
        "dataset": {"name": "synthetic", "format": "array", "limit": None},
        "checkpoint": {"name": name, "arch": "none", "sha256": f"sha-{name}", "path": "-", "ema": False},
        "layer": "avgpool", "feature_dim": dim, "dtype": "float32", "precision": "fp32",
        "transform": {"name": "identity"}, "preprocess": {"backend": "device", "device": "cpu"},
        "software": {"featcache": "test", "torch": "-", "torchvision": "-", "zarr": "-", "numpy": "-", "python": "-"},
    }  # fmt: skip
    for key, value in over.items():
        merge = isinstance(value, dict) and key in ("dataset", "checkpoint", "preprocess", "software")
        prov[key] = {**prov[key], **value} if merge else value
    return Provenance.from_dict(prov)


def make_store(
    path: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    name: str = "ckpt",
    chunk_rows: int | None = 16,  # None: the writer's default (about 16 MiB, at most the split)
    dtype: str = "float32",
    ids: dict[str, list[str]] | None = None,
    finalize: bool = True,
    chunks: int | None = None,
    compression: str = "none",
    views: dict[str, list[np.ndarray]] | None = None,
    views_seed: int = 0,
    classes: dict[str, list[str]] | None = None,
    **prov_over,
) -> Path:
    """Write ``splits`` (name -> (features, labels)) and ``views`` (name -> one array per augmented view);
    ``chunks`` limits how many chunks get written; ``classes`` (name -> class list) replaces a split's default
    class list ('0', '1', ..., the same for every split)."""
    dim = next(iter(splits.values()))[0].shape[1]
    prov = provenance(name, dim, dtype=dtype, **prov_over)
    with StoreWriter(path, prov) as w:
        for split, (X, y) in splits.items():
            split_ids = (ids or {}).get(split) or [f"{split}/{i}" for i in range(len(X))]
            top = max((int(labels.max()) for _, labels in splits.values() if len(labels)), default=-1)
            split_classes = (classes or {}).get(split) or [str(c) for c in range(top + 1)]
            sw = w.split(
                SplitData(split, split_ids, y, f"fp-{split}-{len(X)}", split_classes),
                dim,
                dtype,
                chunk_rows=chunk_rows,
                compression=compression,
            )
            for i in sw.pending()[:chunks]:
                a, b = sw.bounds(i)
                sw.write_chunk(i, X[a:b])
            split_views = (views or {}).get(split, [])
            if split_views:
                for k, vw in enumerate(sw.views(len(split_views), views_seed, {"name": "test-augment"})):
                    for i in vw.pending()[:chunks]:
                        a, b = vw.bounds(i)
                        vw.write_chunk(i, split_views[k][a:b])
            if finalize and chunks is None:
                sw.finalize(views=len(split_views))
    return path


def make_v1_store(path: Path, X: np.ndarray, y: np.ndarray, chunk_rows: int = 16, name: str = "old") -> Path:
    """A complete one-split store in format v1, written the way featcache 0.1 wrote it (no featcache code)."""
    prov = provenance(name, X.shape[1]).to_dict()
    for key in ("pool", "format_version", "created_at", "splits"):
        prov.pop(key)
    prov["checkpoint"] = {k: prov["checkpoint"][k] for k in ("name", "arch", "sha256", "path", "ema")}
    root = zarr.create_group(path, attributes={"featcache": {**prov, "format_version": 1, "created_at": "then"}})
    g = root.create_group("train")
    feats = g.create_array("features", shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype="float32",
                           compressors=None, fill_value=0)  # fmt: skip
    feats[:] = X
    g.create_array("labels", data=np.asarray(y, dtype="<i8"), chunks=(len(y),))
    ids = [f"train/{i}" for i in range(len(X))]
    g.create_array("ids", shape=(len(X),), dtype=str, chunks=(len(X),))[:] = np.asarray(ids, dtype=str)
    n_chunks = -(-len(X) // chunk_rows)
    marks = path / "_featcache" / "train"
    marks.mkdir(parents=True)
    for i in range(n_chunks):
        block = np.ascontiguousarray(X[i * chunk_rows : (i + 1) * chunk_rows], dtype="<f4")
        mark = {"rows": len(block), "sha256": hashlib.sha256(block.tobytes()).hexdigest(), "skipped": []}
        (marks / f"{i}.json").write_text(json.dumps(mark))
    g.attrs["featcache_split"] = {
        "rows": len(X), "dim": X.shape[1], "dtype": "float32", "chunk_rows": chunk_rows, "n_chunks": n_chunks,
        "compression": "none", "fingerprint": f"fp-train-{len(X)}", "ids_sha256": sha256_ids(ids),
        "labels_sha256": sha256_labels(y), "classes": [str(c) for c in range(int(y.max()) + 1)], "complete": True,
        "completed_at": "then", "skipped_rows": [],
    }  # fmt: skip
    root.attrs["featcache"] = {**root.attrs["featcache"], "splits": ["train"]}
    return path
