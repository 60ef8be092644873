"""Build feature stores directly from arrays (no torch), for store, concat and probe tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featcache.store import Provenance, SplitData, StoreWriter

__all__ = ["provenance", "make_store"]


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
    chunk_rows: int = 16,
    dtype: str = "float32",
    ids: dict[str, list[str]] | None = None,
    finalize: bool = True,
    chunks: int | None = None,
    compression: str = "none",
    **prov_over,
) -> Path:
    """Write ``splits`` (name -> (features, labels)); ``chunks`` limits how many chunks get written."""
    dim = next(iter(splits.values()))[0].shape[1]
    prov = provenance(name, dim, dtype=dtype, **prov_over)
    with StoreWriter(path, prov) as w:
        for split, (X, y) in splits.items():
            split_ids = (ids or {}).get(split) or [f"{split}/{i}" for i in range(len(X))]
            classes = [str(c) for c in range(int(y.max()) + 1)] if len(y) else []
            sw = w.split(
                SplitData(split, split_ids, y, f"fp-{split}-{len(X)}", classes),
                dim,
                dtype,
                chunk_rows=chunk_rows,
                compression=compression,
            )
            for i in sw.pending()[:chunks]:
                a, b = sw.bounds(i)
                sw.write_chunk(i, X[a:b])
            if finalize and chunks is None:
                sw.finalize()
    return path
