"""Datasets following torchvision's contract, built from a :class:`~featcache.config.DatasetSpec`.

Every dataset validates in its constructor and holds ``name``, ``split``, ``classes``, ``targets``
(int64 array) and ``ids`` (stable sample ids, deterministic order); ``ds[i]`` is ``(image, target)``
with the optional ``transform`` applied to a PIL RGB image. Two kinds:

- :class:`ArrayDataset`: uint8 ``images`` (N, H, W, 3) in memory (digits, CIFAR); batches slice it directly.
- :class:`FileDataset`: ``paths`` (ImageFolder, iNat18, in :mod:`featcache.datasets_files`);
  :meth:`FileDataset.load` decodes one file to RGB,
  :meth:`FileDataset.read_bytes` returns the encoded bytes (for decoding on the GPU).

Formats register in :data:`FORMATS`; :func:`build_dataset` is the one entry point.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from .config import DatasetSpec
from .errors import BadImageError, ConfigError, DatasetError, unknown_name

__all__ = [
    "FORMATS",
    "IMG_EXTENSIONS",
    "ImageDataset",
    "ArrayDataset",
    "FileDataset",
    "DigitsDataset",
    "CIFAR10",
    "CIFAR100",
    "build_dataset",
    "to_rgb",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FORMATS: dict[str, type[ImageDataset]] = {}


def register(fmt: str) -> Callable[[type[ImageDataset]], type[ImageDataset]]:
    def deco(cls: type[ImageDataset]) -> type[ImageDataset]:
        if fmt in FORMATS:
            raise ConfigError(f"dataset format '{fmt}' is registered twice ({FORMATS[fmt].__name__}, {cls.__name__})")
        cls.format = fmt
        FORMATS[fmt] = cls
        return cls

    return deco


def build_dataset(spec: DatasetSpec, split: str, transform: Callable | None = None) -> ImageDataset:
    """Build split ``split`` of a registered dataset.

    Raises:
        ConfigError: unknown format, split or option (the allowed values are listed).
        DatasetError: the data is missing, empty or malformed on disk.
    """
    if spec.format not in FORMATS:
        raise unknown_name("dataset format", spec.format, FORMATS, f"in dataset '{spec.name}'")
    if split not in spec.splits:
        raise unknown_name("split", split, spec.splits, f"of dataset '{spec.name}'")
    cls = FORMATS[spec.format]
    bad = sorted(set(spec.options) - set(cls.options))
    if bad:
        allowed = ", ".join(cls.options) or "none"
        raise ConfigError(
            f"dataset '{spec.name}': unknown option(s) {bad} for format '{spec.format}'; allowed: {allowed}"
        )
    shared = {"class_splits": spec.splits} if cls.shares_classes else {}
    return cls(spec.root, split, transform, name=spec.name, **spec.options, **shared)


class ImageDataset:
    """Base of all datasets: labels, ids and a content fingerprint.

    Subclasses set the class attributes ``splits`` (``None``: any) and ``options`` (extra keyword arguments
    accepted from ``DatasetSpec.options``) and call ``_setup`` from their constructor. A format whose splits
    list their own classes sets ``shares_classes``: its constructor then takes ``class_splits`` (every split
    of the dataset) and numbers their classes together, so that one label means one class in every split.
    """

    format: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...] | None] = None
    options: ClassVar[tuple[str, ...]] = ()
    shares_classes: ClassVar[bool] = False

    root: Path | None
    split: str
    name: str
    classes: list[str]
    targets: np.ndarray
    ids: list[str]
    transform: Callable | None

    def _setup(self, root, split, transform, name, classes, targets, ids) -> None:
        self.root = None if root is None else Path(root)
        self.split, self.transform, self.name = split, transform, name or self.format
        self.classes = list(classes)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.ids = list(ids)
        if len(self.ids) != len(self.targets):
            raise DatasetError(f"{self.where}: {len(self.ids)} samples but {len(self.targets)} labels")

    @classmethod
    def _check_split(cls, split: str) -> None:
        if cls.splits is not None and split not in cls.splits:
            raise unknown_name("split", split, cls.splits, f"of format '{cls.format}'")

    @property
    def where(self) -> str:
        return f"dataset '{self.name}' split '{self.split}' ({self.root})"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.load(i)
        return (self.transform(img) if self.transform is not None else img), int(self.targets[i])

    def load(self, i: int) -> Image.Image:
        raise NotImplementedError(f"{type(self).__name__} must implement load(i)")

    def subset(self, rows: np.ndarray) -> ImageDataset:
        """The same dataset restricted to ``rows``, in that order (``extract --limit``'s stratified subset)."""
        out = copy.copy(self)
        out.targets = self.targets[rows]
        out.ids = [self.ids[r] for r in rows]
        self._take_content(out, rows)
        return out

    def _take_content(self, out: ImageDataset, rows: np.ndarray) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _take_content")

    def _content_digest(self, h: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _content_digest")

    def fingerprint(self) -> str:
        """sha256 hex of format, split, classes, ids, targets and content.

        Content is the raw pixel bytes for array-backed sets, each file's size (not its bytes: hashing an
        ImageNet-sized tree would take longer than extracting it) for file-backed ones, so an edit that
        keeps a file's size is not detected.
        """
        h = hashlib.sha256()
        for part in (self.format, self.split, "\n".join(self.classes), "\n".join(self.ids)):
            h.update(part.encode())
            h.update(b"\0")
        h.update(self.targets.astype("<i8").tobytes())
        self._content_digest(h)
        return h.hexdigest()

    def __repr__(self) -> str:
        n, k = len(self), len(self.classes)
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={n}, classes={k})"


class ArrayDataset(ImageDataset):
    """Images in memory as uint8 ``images`` (N, H, W, 3), RGB."""

    images: np.ndarray

    def _set_images(self, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(self):
            raise DatasetError(
                f"{self.where}: images must be uint8 (N={len(self)}, H, W, 3), got {images.dtype} {images.shape}"
            )
        self.images = np.ascontiguousarray(images)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def _take_content(self, out: ImageDataset, rows: np.ndarray) -> None:
        out.images = np.ascontiguousarray(self.images[rows])

    def _content_digest(self, h: Any) -> None:
        h.update(repr(self.images.shape).encode())
        h.update(self.images.data)


class FileDataset(ImageDataset):
    """Images as files ``paths``, decoded on demand."""

    paths: list[Path]

    def load(self, i: int) -> Image.Image:
        """Decode sample ``i`` to a fully loaded RGB image.

        Raises:
            BadImageError: the file is missing, unreadable, truncated or not an image.
        """
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                im.load()  # decoding is lazy: a truncated file only fails here
                return to_rgb(im)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise BadImageError(str(path), f"{type(e).__name__}: {e}", row=i) from None

    def _take_content(self, out: ImageDataset, rows: np.ndarray) -> None:
        out.paths = [self.paths[r] for r in rows]

    def read_bytes(self, i: int) -> bytes:
        """The encoded file of sample ``i``.

        Raises:
            BadImageError: the file cannot be read.
        """
        try:
            return self.paths[i].read_bytes()
        except OSError as e:
            raise BadImageError(str(self.paths[i]), f"{type(e).__name__}: {e}", row=i) from None

    def _content_digest(self, h: Any) -> None:
        sizes = np.empty(len(self.paths), dtype="<i8")
        for k, p in enumerate(self.paths):
            try:
                sizes[k] = p.stat().st_size
            except OSError as e:
                raise DatasetError(f"{self.where}: cannot stat {p} ({e.strerror}); restore the file") from None
        h.update(sizes.tobytes())


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB, as torchvision's default loader does (``convert('RGB')``).

    Alpha is dropped, not composited, so features match the research pipeline. 16-bit grayscale
    ('I;16*', and 'I', which is how Pillow opens 16-bit PGM) is scaled by 1/256 instead of being clipped at 255.
    """
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.int64)
        im = Image.fromarray((np.clip(a, 0, 65535) >> 8).astype(np.uint8))
    return im.convert("RGB")


# --- digits ------------------------------------------------------------------------------------------


@register("digits")
class DigitsDataset(ArrayDataset):
    """scikit-learn's 1,797 8x8 digits, as uint8 RGB; a seeded stratified train/test split.

    The split is drawn over all ten classes, then restricted to ``classes``, so every subset agrees
    with the full set on which image is test. Labels follow the order of ``classes``.

    Args:
        root: unused (the data ships with scikit-learn).
        split: 'train' or 'test'.
        classes: digits to keep (default all), relabelled 0..k-1 in the listed order.
        test_fraction: share of each class held out for test.
        seed: seed of the split.
    """

    splits = ("train", "test")
    options = ("classes", "test_fraction", "seed")

    def __init__(
        self,
        root=None,
        split="train",
        transform=None,
        *,
        name=None,
        classes=None,
        test_fraction: float = 0.25,
        seed: int = 0,
    ):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        self._check_split(split)
        keep = list(range(10)) if classes is None else list(classes)
        if not keep or len(set(keep)) != len(keep) or not all(isinstance(c, int) and 0 <= c <= 9 for c in keep):
            raise ConfigError(f"digits option 'classes' must be distinct integers 0..9, got {classes!r}")
        if not 0 < float(test_fraction) < 1:
            raise ConfigError(f"digits option 'test_fraction' must be in (0, 1), got {test_fraction!r}")
        bunch = load_digits()
        labels = bunch.target.astype(np.int64)
        train, test = train_test_split(
            np.arange(len(labels)), test_size=float(test_fraction), random_state=int(seed), stratify=labels
        )
        rows = np.sort(train if split == "train" else test)
        rows = rows[np.isin(labels[rows], keep)]
        remap = {c: k for k, c in enumerate(keep)}
        targets = np.array([remap[int(c)] for c in labels[rows]], dtype=np.int64)
        self._setup(root, split, transform, name, [str(c) for c in keep], targets, [f"digits/{r}" for r in rows])
        # 0..16 -> 0..255, grayscale replicated to RGB
        pixels = np.round(bunch.images[rows] * (255.0 / 16.0)).astype(np.uint8)
        self._set_images(np.repeat(pixels[..., None], 3, axis=-1))


# --- CIFAR -------------------------------------------------------------------------------------------


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


# File-backed formats live in datasets_files.py; importing it registers them (either import order works).
from . import datasets_files  # noqa: E402

_FILE_NAMES = ("ImageFolderDataset", "INaturalist2018", "find_classes", "dataset_classes", "make_samples")


def __getattr__(name: str) -> Any:
    if name in _FILE_NAMES:  # re-exported lazily: a plain import here would be circular
        return getattr(datasets_files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from . import demo_data  # noqa: E402, F401  (importing it registers the demo's digits-mix format)
