"""One class map per store: every split numbers the same classes, so a label means one class in all of them.

Each split records its class list (``SplitMeta.classes``). featcache 0.2.0 and earlier numbered each ImageFolder
split's class directories on its own, so in a split that lacked a class the next classes had other labels; such a
store is told apart by its splits' lists differing, and refused here with the classes named.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import StoreError, StoreMismatchError
from .store import Store

__all__ = ["class_map_diff", "split_class_mismatch", "check_class_map"]

SHOWN = 10  # class names listed per difference; the rest are counted


def _names(classes: Sequence[str]) -> str:
    extra = f" and {len(classes) - SHOWN} more" if len(classes) > SHOWN else ""
    return ", ".join(classes[:SHOWN]) + extra


def class_map_diff(a: str, classes_a: Sequence[str], b: str, classes_b: Sequence[str]) -> str:
    """How two class lists differ, naming the classes: ``"'val' lacks dog; 'train' lacks ant"``.

    Args:
        a, b: what holds each list (a split name, quoted as given).
        classes_a, classes_b: the two class lists, label order.

    Returns:
        The classes each list lacks, or where the same classes are numbered in another order.
    """
    only_b = [c for c in classes_b if c not in set(classes_a)]
    only_a = [c for c in classes_a if c not in set(classes_b)]
    parts = [f"'{x}' lacks {_names(missing)}" for x, missing in ((a, only_b), (b, only_a)) if missing]
    if parts:
        return "; ".join(parts)
    k = next((i for i, (x, y) in enumerate(zip(classes_a, classes_b, strict=True)) if x != y), 0)
    return f"the same classes in another order (label {k} is {classes_a[k]} in '{a}', {classes_b[k]} in '{b}')"


def split_class_mismatch(path, a: str, classes_a: Sequence[str], b: str, classes_b: Sequence[str]) -> str:
    """The one-line refusal for a store whose splits ``a`` and ``b`` number different classes."""
    diff = class_map_diff(a, classes_a, b, classes_b)
    return (
        f"splits '{a}' and '{b}' of store {path} number different classes ({diff}), so a label means another class "
        "in each (featcache 0.2.0 and earlier numbered each split's classes on its own, as does an extraction while "
        "another split's folder is missing); extract the store again with `featcache extract ... --overwrite`"
    )


def check_class_map(store: Store, split: str) -> None:
    """Refuse ``split`` of ``store`` when another of its splits records another class list.

    Args:
        store: an opened store.
        split: the split about to be read.

    Raises:
        StoreError: ``split`` is absent or has no metadata.
        StoreMismatchError: another split numbers other classes (the classes are named).
    """
    mine = store.split_meta(split).classes
    for other in store.splits:
        if other == split:
            continue
        try:
            theirs = store.split_meta(other).classes
        except StoreError:  # a damaged other split is verify's business; it does not change this one's labels
            continue
        if tuple(theirs) != tuple(mine):
            raise StoreMismatchError(split_class_mismatch(store.path, split, mine, other, theirs))
