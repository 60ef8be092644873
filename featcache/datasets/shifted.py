"""ImageNet test sets under distribution shift (format ``imagenet-shift``): ImageNet-V2, -Sketch, -R and -A.

Each ships as one folder of class folders, the set itself being split ``test``; a 1000-way ImageNet head scores it
(``featcache.class_subsets``). Classes are ImageNet-1k wnids, numbered in ImageNet-1k's (sorted) order, so ImageNet-R's
200 folders get labels 0..199 as the research code's ImageFolder gives them, and its ``targetmask`` over the 1000
classes picks their columns in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..class_subsets import IMAGENET1K_WNIDS, class_subset
from ..errors import ConfigError, DatasetError
from ._base import FileDataset, register
from .folder import find_classes, make_samples

__all__ = ["ImageNetShift", "FOLDER_NAMES"]

# how a set names its class folders: by WordNet id (Sketch, R, A), or by ImageNet-1k class index 0..999 (the
# ImageNet-V2 release's "format-val" folders)
FOLDER_NAMES = ("wnid", "index")
_SHOWN = 5


@register("imagenet-shift")
class ImageNetShift(FileDataset):
    """``root/<class folder>/<image>``: an ImageNet test set whose classes are ImageNet-1k classes.

    ``classes`` are the folders' wnids in ImageNet-1k order; ids are paths relative to ``root`` (posix).

    Args:
        folder_names: ``wnid`` (default; ImageNet-Sketch, -R, -A) or ``index``: folder ``k`` is ImageNet-1k class
            ``k`` (ImageNet-V2's release). The research code numbers V2's folders as ImageFolder does, as strings
            ('10' before '2'); here folder k is class k, the label a 1000-way head predicts for it.
        class_subset: the classes the set must hold, exactly (a name of
            :data:`~featcache.class_subsets.CLASS_SUBSETS` or a list of wnids), so that a partial download is
            refused rather than scored on other classes. Default: any ImageNet-1k classes.

    Raises:
        DatasetError: ``root`` is missing or has no class folder, a class folder holds no image, or the folders are
            not the classes of ``class_subset``.
        ConfigError: an unknown ``folder_names`` or ``class_subset``; a folder that is not an ImageNet-1k wnid
            (or class index).
    """

    splits = ("test",)
    options = ("folder_names", "class_subset")

    def __init__(
        self,
        root,
        split="test",
        transform=None,
        *,
        name=None,
        folder_names: str = "wnid",
        class_subset: str | Sequence[str] | None = None,
    ):
        self._check_split(split)
        root = Path(root)
        self.name = name or self.format
        folders = find_classes(root)[0]
        wnid_of = _wnids(folders, folder_names, f"dataset '{self.name}' ({root})")
        ordered = sorted(folders, key=lambda f: _INDEX[wnid_of[f]])
        classes = [wnid_of[f] for f in ordered]
        if class_subset is not None:
            _check_subset(classes, class_subset, self.name, root)
        samples = make_samples(root, {f: i for i, f in enumerate(ordered)})
        ids = [p.relative_to(root).as_posix() for p, _ in samples]
        self._setup(root, split, transform, name, classes, [t for _, t in samples], ids)
        self.paths = [p for p, _ in samples]


_INDEX = {w: i for i, w in enumerate(IMAGENET1K_WNIDS)}


def _wnids(folders: list[str], folder_names: str, where: str) -> dict[str, str]:
    """Folder name -> the ImageNet-1k wnid it stands for."""
    if folder_names not in FOLDER_NAMES:
        raise ConfigError(f"{where}: option folder_names '{folder_names}' is not one of {', '.join(FOLDER_NAMES)}")
    if folder_names == "wnid":
        bad = [f for f in folders if f not in _INDEX]
        fix = "set folder_names: index if the folders are class indices 0..999 (ImageNet-V2)"
        out = {f: f for f in folders}
    else:
        bad = [f for f in folders if not (f.isdigit() and int(f) < len(IMAGENET1K_WNIDS))]
        fix = "set folder_names: wnid if the folders are named by WordNet id"
        out = {f: IMAGENET1K_WNIDS[int(f)] for f in folders if f not in bad}
    if bad:
        raise ConfigError(
            f"{where}: {len(bad)} class folder(s) are not ImageNet-1k {folder_names}s "
            f"({', '.join(bad[:_SHOWN])}); {fix}"
        )
    if len(set(out.values())) != len(out):  # "7" and "007" both name class 7
        raise ConfigError(f"{where}: two class folders name the same ImageNet-1k class; keep one of them")
    return out


def _check_subset(classes: list[str], subset: str | Sequence[str], name: str, root: Path) -> None:
    want = class_subset(subset, f"dataset '{name}' option class_subset")
    missing = sorted(set(want) - set(classes))
    extra = sorted(set(classes) - set(want))
    if missing or extra:
        what = [f"lacks {len(missing)} ({', '.join(missing[:_SHOWN])})"] * bool(missing)
        what += [f"has {len(extra)} more ({', '.join(extra[:_SHOWN])})"] * bool(extra)
        label = subset if isinstance(subset, str) else "listed"
        raise DatasetError(
            f"dataset '{name}': {root} holds {len(classes)} class folders, not the {len(want)} {label} classes: it "
            f"{' and '.join(what)}; download the whole set again (a partial one would be scored on other classes)"
        )
