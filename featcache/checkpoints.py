"""Checkpoint files to state dicts, and state dicts to the keys of a backbone: one path for every family.

:func:`load_state_dict` reads a file (torch or safetensors) and finds the weights inside it; then
(:mod:`featcache.checkpoint_keys`, re-exported here) :func:`clean_state_dict` removes the wrapper prefixes and
renames every training framework adds, and :func:`match_state_dict` fits what is left to a backbone's own keys: it
finds a uniform prefix (``model.``, ``backbone.``, ...), drops the removed classifier, and tells extra keys (an SSL
projector) from keys of another architecture.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .checkpoint_keys import KeyMatch, clean_state_dict, listing, match_state_dict
from .errors import CheckpointError, StoreMismatchError

if TYPE_CHECKING:
    from .store import CheckpointRef

__all__ = [
    "KeyMatch",  # with clean_state_dict and match_state_dict, from featcache.checkpoint_keys
    "file_sha256",
    "file_changed",
    "check_store_checkpoint",
    "check_step",
    "checkpoint_step",
    "load_checkpoint",
    "load_state_dict",
    "clean_state_dict",
    "match_state_dict",
]

log = logging.getLogger(__name__)

# Where the state dict sits inside a checkpoint dict, in priority order.
_CONTAINER_KEYS = (
    "model_params",  # AlgoPerf (the seed's checkpoints)
    "state_dict",  # PyTorch ImageNet example (`main.py`), timm, PyTorch Lightning
    "model",  # DeiT/MAE-style training scripts
)
# Deeper paths to a state dict, tried after those: VISSL / Classy Vision (the SEER trunks) keep the trunk's weights
# apart from its heads'.
_NESTED_CONTAINERS = (("classy_state_dict", "base_model", "model", "trunk"),)
# EMA weights, tried (and required) only when asked for, in timm's order.
_EMA_KEYS = (
    "state_dict_ema",  # timm's train.py (ModelEmaV2/V3)
    "model_ema",  # DeiT-style scripts
)
# Where a checkpoint records the optimizer steps it was trained for: AlgoPerf's (the seed's checkpoints) and
# PyTorch Lightning's ``global_step``.
_STEP_KEYS = ("global_step",)
# The fix for a missing EMA copy depends on who asked for it.
_EMA_HINTS = {
    "registry": "drop 'ema: true' from its registry entry",
    "option": "drop --ema for this file",
    None: "drop --ema (or 'ema: true' from its registry entry)",
}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in blocks (:func:`hashlib.file_digest`), so a large checkpoint is not held in
    memory."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# (path, size, mtime_ns) -> sha256: a file hashed once per process while its size and mtime stay the same
_HASHED: dict[tuple[str, int, int], str] = {}


def file_changed(
    path: str | os.PathLike, sha256: str, size: int | None = None, mtime_ns: int | None = None
) -> str | None:
    """Whether the file at ``path`` is no longer the one recorded with ``sha256`` (and ``size``, ``mtime_ns``).

    The same size and mtime as recorded mean the same file; otherwise (or with none recorded) the file is hashed.
    An absent file is not a changed one: a machine that only probes may hold the stores without the checkpoints,
    and the recorded hash is then the identity (logged at debug level).

    Returns:
        None when the file is the recorded one or absent, else its sha256 now.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        log.debug("checkpoint %s is absent here: its store's recorded sha256 %s is its identity", path, sha256[:12])
        return None
    if size is not None and (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = file_sha256(path)
    return None if _HASHED[key] == sha256 else _HASHED[key]


def check_store_checkpoint(store_path: str | os.PathLike, ref: CheckpointRef) -> None:
    """Refuse a store whose checkpoint file (``ref``, its CheckpointRef) changed since it was extracted.

    Raises:
        StoreMismatchError: the file at ``ref.path`` is no longer the recorded one (see :func:`file_changed`).
    """
    now = file_changed(ref.path, ref.sha256, ref.size, ref.mtime_ns)
    if now is not None:
        raise StoreMismatchError(
            f"store {store_path} was extracted from an older {ref.path} (sha256 {ref.sha256[:12]}, the file's is now "
            f"{now[:12]}); extract it again (featcache extract ... --overwrite) or put the old file back"
        )


def _unsafe_global(message: str) -> str:
    found = re.search(r"GLOBAL (\S+) was not an allowed global", message)
    if found:
        return f"it holds the unsafe global {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", message)
    return found.group(1).strip().rstrip(".") if found else "it holds objects other than tensors"


def _torch_read(path: Path, trust: bool, mmap: bool = False) -> object:
    try:
        # Research .pth.tar files often keep the training `args` Namespace; allow just that (as timm does).
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=not trust, mmap=mmap)
    except Exception as e:
        # torch.load signals a bad file with many types (KeyError for text, EOFError, RuntimeError from zip).
        # an invalid opcode ("Unsupported operand") is a corrupt file, not an object needing trust
        unsafe = "weights only" in str(e).lower() and "Unsupported operand" not in str(e)
        if isinstance(e, pickle.UnpicklingError) and not trust and unsafe:
            raise CheckpointError(
                f"checkpoint {path} was refused by the weights-only loader ({_unsafe_global(str(e))}); "
                "if you trust this file, pass --trust-checkpoint"
            ) from None
        reason = f"{type(e).__name__}: {e}".splitlines()[0].split(". ")[0]  # torch appends advice
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a torch file ({reason}); save or copy it again"
        ) from e


def _safetensors_read(path: Path, trust: bool) -> object:
    # timm's Hugging Face Hub weights (`model.safetensors`): tensors only, nothing to unpickle.
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"checkpoint {path} is a safetensors file; pip install safetensors") from None
    try:
        return load_file(path, device="cpu")
    except Exception as e:
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({reason}); save or copy it again") from e


# File suffix -> reader(path, trust); anything else is read by torch.load.
_READERS: dict[str, Callable[[Path, bool], object]] = {".safetensors": _safetensors_read}


def _as_state_dict(obj: object) -> dict[str, Tensor] | None:
    """The weights held by ``obj``: a plain state dict, or a whole pickled network's."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    return None


def _step(obj: object) -> int | None:
    """The training step a checkpoint's top-level dict records (see ``_STEP_KEYS``), else None."""
    for key in _STEP_KEYS if isinstance(obj, dict) else ():
        value = obj.get(key)
        if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value.item())
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def checkpoint_step(path: str | os.PathLike, *, trust: bool = False) -> int | None:
    """The training step ``path`` records (AlgoPerf's ``global_step``), or None when it records none.

    A torch zip file is memory-mapped, so its tensors are not read: cheap enough for ``--dry-run``.

    Raises:
        CheckpointError: the file is missing, corrupt, or needs ``trust`` (see :func:`load_state_dict`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} not found; check the path or the registry entry")
    if path.suffix.lower() in _READERS:  # safetensors: tensors only, no step
        return None
    return _step(_torch_read(path, trust, mmap=zipfile.is_zipfile(path)))


def check_step(path: str | os.PathLike, step: int | None, expected: int | None, source: str | None) -> None:
    """Refuse a checkpoint whose recorded training step is not the one ``source`` expects (None: nothing to check).

    Raises:
        CheckpointError: names the file, both numbers and where the expected one comes from.
    """
    if step is None or expected is None or step == expected:
        return
    source = source or "its registry entry"
    raise CheckpointError(
        f"checkpoint {path} records training step {step} (global_step) but {source} says {expected} steps per "
        f"model; point the registry entry at the {expected}-step file, or correct {source}"
    )


def load_checkpoint(
    path: str | os.PathLike, *, trust: bool = False, ema: bool = False, ema_source: str | None = None
) -> tuple[dict[str, Tensor], int | None]:
    """:func:`load_state_dict`, and the training step the file records (None when it records none).

    Raises:
        CheckpointError: see :func:`load_state_dict`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} not found; check the path or the registry entry")
    obj = _READERS.get(path.suffix.lower(), _torch_read)(path, trust)
    return _weights(obj, path, ema, ema_source), _step(obj)


def load_state_dict(
    path: str | os.PathLike, *, trust: bool = False, ema: bool = False, ema_source: str | None = None
) -> dict[str, Tensor]:
    """Read a checkpoint file and return the state dict inside it, keys as saved.

    Args:
        path: the checkpoint file (torch, or ``.safetensors``).
        trust: unpickle arbitrary Python objects (``weights_only=False``); only for files you trust.
            A whole pickled ``nn.Module`` (which only loads this way) gives its ``state_dict()``.
        ema: return the EMA weights (``state_dict_ema``, ``model_ema``) instead of the regular ones.
        ema_source: who asked for ``ema``, to word the fix when the file has none: ``"registry"``
            (an ``ema: true`` entry), ``"option"`` (``--ema``) or None (unknown).

    Returns:
        The state dict found under the first container key present (see ``_CONTAINER_KEYS``, then the nested
        ``classy_state_dict.base_model.model.trunk`` of VISSL's SEER files), or the top-level dict (or pickled
        network) itself.

    Raises:
        CheckpointError: the file is missing or corrupt, holds objects the weights-only unpickler
            refuses (and ``trust`` is False), lacks the EMA weights asked for, or holds no state dict.
    """
    return load_checkpoint(path, trust=trust, ema=ema, ema_source=ema_source)[0]


def _weights(obj: object, path: Path, ema: bool, ema_source: str | None) -> dict[str, Tensor]:
    if not isinstance(obj, dict | nn.Module):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of weights")
    top = obj if isinstance(obj, dict) else {}
    if ema and not any(k in top for k in _EMA_KEYS):
        what = f"top-level keys: {listing(sorted(map(str, top)))}" if top else "a whole pickled network"
        raise CheckpointError(
            f"checkpoint {path} has no EMA weights (no {' or '.join(map(repr, _EMA_KEYS))}; {what}); "
            f"{_EMA_HINTS.get(ema_source, _EMA_HINTS[None])}"
        )
    for key in _EMA_KEYS if ema else _CONTAINER_KEYS:
        if (sd := _as_state_dict(top.get(key))) is not None:
            log.debug("checkpoint %s: state dict under '%s'", path, key)
            return sd
    for keys in () if ema else _NESTED_CONTAINERS:
        inner: object = top
        for key in keys:
            inner = inner.get(key) if isinstance(inner, dict) else None
        if (sd := _as_state_dict(inner)) is not None:
            log.debug("checkpoint %s: state dict under '%s'", path, ".".join(keys))
            return sd
    if (sd := _as_state_dict(obj)) is not None:
        return sd
    raise CheckpointError(
        f"no state dict found in checkpoint {path}: top-level keys {listing(sorted(map(str, top)))}; "
        f"expected one of {list(_CONTAINER_KEYS)} or a plain state dict"
    )
