"""The dataset machinery: the format registry, :func:`build_dataset`, the base classes and ``--limit``'s subset.

Every dataset validates in its constructor and holds ``name``, ``split``, ``classes``, ``targets``
(int64 array) and ``ids`` (stable sample ids, deterministic order); ``ds[i]`` is ``(image, target)``
with the optional ``transform`` applied to a PIL RGB image. Two kinds:

- :class:`ArrayDataset`: uint8 ``images`` (N, H, W, 3) in memory (digits, CIFAR); batches slice it directly.
- :class:`FileDataset`: ``paths`` (ImageFolder, iNat18); :meth:`FileDataset.load` decodes one file to RGB,
  :meth:`FileDataset.read_bytes` returns the encoded bytes (for decoding on the GPU).

Formats register in :data:`FORMATS` (each in its own module of :mod:`featcache.datasets`, which imports them
all); :func:`build_dataset` is the one entry point.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ..config import DatasetSpec
from ..errors import BadImageError, ConfigError, DatasetError, unknown_name

__all__ = [
    "FORMATS",
    "IMG_EXTENSIONS",
    "ImageDataset",
    "ArrayDataset",
    "FileDataset",
    "build_dataset",
    "register",
    "stratified_rows",
    "to_rgb",
]

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FORMATS: dict[str, type[ImageDataset]] = {}


def register(fmt: str) -> Callable[[type[ImageDataset]], type[ImageDataset]]:
    """Class decorator: register a dataset class as format ``fmt``.

    Raises:
        ConfigError: ``fmt`` is registered already.
    """

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
    _limit_fingerprint: str | None = None  # set by limited()

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
        """The same dataset restricted to ``rows``, in that order; its fingerprint is that of its own content."""
        out = copy.copy(self)
        out._limit_fingerprint = None
        out.targets = self.targets[rows]
        out.ids = [self.ids[r] for r in rows]
        self._take_content(out, rows)
        return out

    def _take_content(self, out: ImageDataset, rows: np.ndarray) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _take_content")

    def limited(self, limit: int | None) -> ImageDataset:
        """``extract --limit``: ``limit`` samples spread over the classes (:func:`stratified_rows`), or ``self``
        when ``limit`` is None or not below the split's size.

        The subset's :meth:`fingerprint` is derived from the whole split's, the limit and the rows taken, so a
        store of the subset and one of the whole split never pass for each other. A class the split has and the
        subset lacks is logged as a warning; the class map is the dataset's (every split's classes), so a class
        this split never had is not reported.
        """
        if limit is None or limit >= len(self):
            return self
        rows = stratified_rows(self.targets, limit)
        out = self.subset(rows)
        # another sample set: another fingerprint
        derived = f"{self.fingerprint()}:stratified{limit}:".encode() + rows.astype("<i8").tobytes()
        out._limit_fingerprint = hashlib.sha256(derived).hexdigest()
        lost = sorted(set(np.unique(self.targets).tolist()) - set(np.unique(out.targets).tolist()))
        if lost:
            names = ", ".join(self.classes[c] for c in lost[:10])
            where = f"{self.name}/{self.split}"
            log.warning("--limit %d leaves %d class(es) of %s without a sample: %s", limit, len(lost), where, names)
        return out

    def _content_digest(self, h: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _content_digest")

    def fingerprint(self) -> str:
        """sha256 hex of format, split, classes, ids, targets and content.

        Content is the raw pixel bytes for array-backed sets, each file's size (not its bytes: hashing an
        ImageNet-sized tree would take longer than extracting it) for file-backed ones, so an edit that
        keeps a file's size is not detected. A subset made by :meth:`limited` has the fingerprint it derived.
        """
        if self._limit_fingerprint is not None:
            return self._limit_fingerprint
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


def stratified_rows(targets: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows (sorted) spread over the classes in proportion to their sizes, the same every time.

    Each class contributes its first rows in dataset order; leftover places go to the classes with the largest
    remainders, ties to the smaller class index.
    """
    targets = np.asarray(targets)
    if n >= len(targets):
        return np.arange(len(targets))
    classes, counts = np.unique(targets, return_counts=True)
    share = counts * n / len(targets)
    take = np.floor(share).astype(int)
    order = np.lexsort((classes, -(share - take)))  # largest remainder first
    take[order[: n - take.sum()]] += 1
    rows = [np.flatnonzero(targets == c)[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(rows))
