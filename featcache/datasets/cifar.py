"""CIFAR-10 and CIFAR-100 from their python pickle batches (formats ``cifar10``, ``cifar100``).

As torchvision's ``datasets/cifar.py``: file lists are class attributes, and CIFAR-100 overrides only them. The
pickles are read with a restricted unpickler, which loads no code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from ._base import ArrayDataset, register

__all__ = ["CIFAR10", "CIFAR100"]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold (dicts, lists, numpy arrays): no arbitrary code."""

    # numpy arrays as pickled by numpy 1 and 2 (protocol 2-4: _reconstruct, protocol 5: _frombuffer);
    # _codecs.encode carries bytes in protocol-2 pickles written by Python 3.
    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        *(
            (f"numpy.{core}.{mod}", fn)
            for core in ("core", "_core")
            for mod, fn in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
        ),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy 1 name; numpy 2 warns on it
            module = module.replace("numpy.core.", "numpy._core.", 1)
        return super().find_class(module, name)


@register("cifar10")
class CIFAR10(ArrayDataset):
    """CIFAR-10 from its python pickle batches under ``root/cifar-10-batches-py``.

    Read directly (no checksum of the official archive, unlike torchvision), so any file in the format
    loads. ids are ``"{index}:{filename}"``.

    Raises:
        DatasetError: the directory or a file is missing, or a file is not a CIFAR pickle.
    """

    splits = ("train", "test")
    base_folder, archive = "cifar-10-batches-py", "cifar-10-python.tar.gz"
    train_list = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
    test_list = ("test_batch",)
    meta_file, meta_key, labels_key = "batches.meta", "label_names", "labels"

    def __init__(self, root, split="train", transform=None, *, name=None):
        self._check_split(split)
        folder = Path(root) / self.base_folder
        files = self.train_list if split == "train" else self.test_list
        expected = ", ".join((*self.train_list, *self.test_list, self.meta_file))
        for f in (self.meta_file, *files):
            if not (folder / f).is_file():
                missing = folder if not folder.is_dir() else folder / f
                raise DatasetError(
                    f"{self.format}: {missing} not found; expected {folder} to hold {expected}: extract "
                    f"{self.archive} (https://www.cs.toronto.edu/~kriz/cifar.html) into {folder.parent}"
                )
        meta = self._read(folder / self.meta_file, (self.meta_key,))
        datas, labels, names = [], [], []
        for f in files:
            entry = self._read(folder / f, ("data", self.labels_key, "filenames"))
            data = np.asarray(entry["data"])
            n = len(entry[self.labels_key])
            if data.dtype != np.uint8 or data.shape != (n, 3072) or len(entry["filenames"]) != n:
                raise DatasetError(
                    f"{self.format}: {folder / f} has data {data.dtype} {data.shape} for {n} labels, "
                    "expected uint8 (N, 3072) with N labels and filenames; re-download it"
                )
            datas.append(data)
            labels.extend(int(v) for v in entry[self.labels_key])
            names.extend(_text(v) for v in entry["filenames"])
        classes = [_text(c) for c in meta[self.meta_key]]
        if labels and not 0 <= min(labels) <= max(labels) < len(classes):
            raise DatasetError(
                f"{self.format}: labels in {folder} fall outside the {len(classes)} classes of the meta file"
            )
        ids = [f"{i}:{fn}" for i, fn in enumerate(names)]
        self._setup(root, split, transform, name, classes, labels, ids)
        # planar R, G, B rows of 32x32 -> (N, 32, 32, 3)
        self._set_images(np.concatenate(datas).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))

    def _read(self, path: Path, keys: tuple[str, ...]) -> dict:
        try:
            with open(path, "rb") as f:
                entry = _ArrayUnpickler(f, encoding="latin1").load()
        except Exception as e:  # any failure to parse means the same thing: not a CIFAR batch
            raise DatasetError(f"{self.format}: {path} is not a readable CIFAR pickle ({e}); re-download it") from None
        if isinstance(entry, dict):  # pickled by Python 3 with bytes keys (b"data"): the same batch
            entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise DatasetError(f"{self.format}: {path} lacks key(s) {missing}; re-download it")
        return entry


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


@register("cifar100")
class CIFAR100(CIFAR10):
    """CIFAR-100 (fine labels) from ``root/cifar-100-python``."""

    base_folder, archive = "cifar-100-python", "cifar-100-python.tar.gz"
    train_list = ("train",)
    test_list = ("test",)
    meta_file, meta_key, labels_key = "meta", "fine_label_names", "fine_labels"
