"""Errors that teach: every message names the file, key or option, the bad value and the fix.

The CLI turns any :class:`FeatcacheError` into a one-line message and a non-zero exit status;
library code raises them and never prints or exits.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "FeatcacheError",
    "ConfigError",
    "CheckpointError",
    "DatasetError",
    "BadImageError",
    "BadImagesError",
    "StoreError",
    "StoreIncompleteError",
    "StoreMismatchError",
    "StoreLockedError",
    "ProbeError",
    "unknown_name",
]


class FeatcacheError(Exception):
    """Base class of every error featcache raises on purpose."""


class ConfigError(FeatcacheError, ValueError):
    """A registry entry, option value or path is invalid."""


class CheckpointError(FeatcacheError):
    """A checkpoint is missing, unreadable, untrusted or for another architecture."""


class DatasetError(FeatcacheError):
    """A dataset is missing, empty or malformed on disk."""


class BadImageError(DatasetError):
    """One image cannot be decoded; carries the file (and dataset row) so the caller can skip it.

    Not picklable through ``args``: worker processes send ``(path, reason)`` and the parent rebuilds it.
    """

    def __init__(self, path: str, reason: str, row: int | None = None):
        self.path, self.reason, self.row = path, reason, row
        super().__init__(
            f"cannot decode image {path}: {reason}; fix or remove the file, "
            "or pass --on-bad-image skip to record it and go on"
        )


class BadImagesError(DatasetError):
    """Undecodable images of a split, all of them: the run decoded the rest of the split to list every one."""

    def __init__(self, bad: list[BadImageError]):
        self.bad = bad
        shown = ", ".join(f"{b.path} ({b.reason})" for b in bad[:5]) + (
            f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        )
        super().__init__(
            f"cannot decode {len(bad)} image(s): {shown}; fix or remove them, or pass --on-bad-image skip to "
            "record them and go on"
        )


class StoreError(FeatcacheError):
    """A feature store is unreadable, of an unknown format, or fails verification."""


class StoreIncompleteError(StoreError):
    """A store split has not been completely written."""


class StoreMismatchError(StoreError):
    """Stores (or a store and a request) disagree on provenance and must not be mixed."""


class StoreLockedError(StoreError):
    """Another live process holds the store's write lock."""


class ProbeError(FeatcacheError):
    """The probe cannot give a sound number (non-finite features or loss, too few classes, ...)."""


def unknown_name(kind: str, name: str, known: Iterable[str], hint: str = "") -> ConfigError:
    """Build the error for an unknown registry name, suggesting the closest known ones."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    head = f"unknown {kind} '{name}'"
    if close:
        head += f" (did you mean {', '.join(repr(c) for c in close)}?)"
    parts = [head]
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    parts.append(f"known: {shown}" if known else "none are registered")
    if hint:
        parts.append(hint)
    return ConfigError("; ".join(parts))
