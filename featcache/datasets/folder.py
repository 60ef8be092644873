"""ImageFolder (format ``imagefolder``): ``root/<split>/<class>/<image>``, as ImageNet's train/ and val/.

As torchvision's ``datasets/folder.py``, classes and samples come from small pure functions
(:func:`find_classes`, :func:`make_samples`), everything sorted; unlike it, every split of a dataset numbers
its classes by one map (:func:`dataset_classes`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import DatasetError
from ._base import IMG_EXTENSIONS, FileDataset, register

__all__ = ["ImageFolderDataset", "find_classes", "dataset_classes", "make_samples"]

log = logging.getLogger(__name__)


def find_classes(directory: Path) -> tuple[list[str], dict[str, int]]:
    """Sorted sub-directory names of ``directory`` and their indices.

    Raises:
        DatasetError: ``directory`` is missing or has no sub-directory.
    """
    if not directory.is_dir():
        raise DatasetError(f"image folder {directory} not found; expected class sub-directories of {_exts()} images")
    classes = _class_dirs(directory)
    if not classes:
        raise DatasetError(f"image folder {directory} has no class sub-directories; put {_exts()} images in <class>/")
    return classes, {c: i for i, c in enumerate(classes)}


def dataset_classes(root: Path, split: str, splits: Sequence[str] = ()) -> tuple[list[str], dict[str, int]]:
    """One class map for a dataset: the sorted union of the class directories of ``split`` and ``splits``.

    Numbering each split's directories on their own (torchvision's ImageFolder, one folder at a time) gives a
    class another label in a split that lacks an earlier class; the union gives every split the same labels.
    A split of ``splits`` whose folder is absent is left out (it may not be downloaded yet), with a warning; one
    without class directories (an unlabelled test/ of bare images) adds no class.

    Raises:
        DatasetError: ``split``'s folder is missing or has no class sub-directory.
    """
    classes = set(find_classes(_split_dir(root, split))[0])
    for other in dict.fromkeys(splits):
        if other == split:
            continue
        if not _split_dir(root, other).is_dir():
            log.warning("image folder %s not found: numbering the classes of split '%s' without it",
                        _split_dir(root, other), split)  # fmt: skip
            continue
        classes.update(_class_dirs(_split_dir(root, other)))
    ordered = sorted(classes)
    return ordered, {c: i for i, c in enumerate(ordered)}


def _class_dirs(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _split_dir(root: Path, split: str) -> Path:
    return Path(root) if split == "all" else Path(root) / split


def make_samples(
    directory: Path, class_to_idx: dict[str, int], extensions: tuple[str, ...] = IMG_EXTENSIONS
) -> list[tuple[Path, int]]:
    """``(path, class index)`` of every image under each class directory, classes in index order,
    files sorted within each class (symlinks followed, hidden files skipped). A class without a directory here
    (one that only another split of the dataset has) contributes no sample.

    Raises:
        DatasetError: a class directory holds no file with an accepted extension.
    """
    samples = []
    for cls, idx in sorted(class_to_idx.items(), key=lambda kv: kv[1]):
        if not (directory / cls).is_dir():
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(directory / cls, followlinks=True):
            dirnames.sort()
            found += [Path(dirpath, f) for f in filenames if f.lower().endswith(extensions) and not f.startswith(".")]
        if not found:
            raise DatasetError(
                f"class folder {directory / cls} holds no {_exts(extensions)} image; add some or remove it"
            )
        samples += [(p, idx) for p in sorted(found)]
    return samples


def _exts(extensions: tuple[str, ...] = IMG_EXTENSIONS) -> str:
    return "/".join(extensions)


@register("imagefolder")
class ImageFolderDataset(FileDataset):
    """``root/<split>/<class>/<image>`` (``root/<class>/<image>`` for split 'all'), as ImageNet's train/ and val/.

    ids are paths relative to the split directory, in posix form.

    Args:
        class_splits: every split of the dataset (:func:`~featcache.datasets.build_dataset` passes them): classes
            are the sorted union of their class directories, so a label names the same class in every split.
            Default: this split's directories alone, as torchvision's ImageFolder numbers them.

    Raises:
        DatasetError: the split directory is missing, has no class directory, or a class has no image.
    """

    shares_classes = True

    def __init__(self, root, split="train", transform=None, *, name=None, class_splits: Sequence[str] = ()):
        split_dir = _split_dir(root, split)
        classes, class_to_idx = dataset_classes(Path(root), split, class_splits)
        samples = make_samples(split_dir, class_to_idx)
        ids = [p.relative_to(split_dir).as_posix() for p, _ in samples]
        self._setup(root, split, transform, name, classes, [t for _, t in samples], ids)
        self.paths = [p for p, _ in samples]
