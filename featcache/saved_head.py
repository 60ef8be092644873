"""Saved heads: the head a probe selected, written as safetensors with a JSON header, read back to score or to use.

File layout (``--save-head PATH``, format :data:`featcache.head_layout.FORMAT`):

- tensors (float32): ``weight`` (C, D) and ``bias`` (C,), the Linear on normalised features (SGD's BatchNorm affine
  folded in); ``norm.mean`` and ``norm.scale`` (D,), the normalisation's statistics (BatchNorm's running mean and
  variance, or L-BFGS's mean and inverse std; absent for a Linear head); ``block_bias`` (k, C), the bias of each
  store's block of features alone (per-model scores, :mod:`featcache.linear_head`);
- metadata ``featcache_head``: a JSON :class:`featcache.head_layout.HeadHeader`: the normalisation, the rows per
  scoring block, the class list, the feature layout (which stores, in which order, their checkpoint hashes, dims,
  layer, pool, transform, dtype and precision) and the probe record's id and key.

A head is written to a temporary file, fsynced and renamed onto ``PATH``: a reader never sees half a head.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .devices import resolve_device
from .errors import ConfigError
from .head_layout import FORMAT, META_KEY, FeatureBlock, HeadHeader, read_header
from .linear_head import BN_EPS, LinearHead, Scores
from .results_record import ProbeRecord

__all__ = ["HeadModule", "SavedHead", "check_head_path", "load_head", "read_head", "write_head"]


@dataclass(frozen=True)
class SavedHead:
    """A head with what it means: its classes, its feature layout and the probe it comes from."""

    head: LinearHead
    block_bias: torch.Tensor  # (k, C): each block's bias alone
    header: HeadHeader

    @classmethod
    def of(cls, record: ProbeRecord, layout: list[FeatureBlock], classes: list[str], head: LinearHead) -> SavedHead:
        """The saved form of a probe's selected ``head``.

        Args:
            record: the probe's record (its id, key, splits, selection).
            layout: the probe's stores, in order.
            classes: the class names, in label order.
            head: the selected head as it scored test.
        """
        block_bias = torch.stack([head.block_bias(a, b) for a, b in _bounds(layout)])
        sel = record.selected
        probe = {"id": record.id, "key": record.key, "dataset": record.dataset, "train_split": record.train_split,
                 "test_split": record.test_split, "solver": record.solver, "params": sel.params, "epoch": sel.epoch,
                 "test_top1": sel.test_top1, "test_top5": sel.test_top5, "device": record.device}  # fmt: skip
        header = HeadHeader(FORMAT, head.norm, head.eval_rows, tuple(classes), tuple(layout), probe, __version__)
        return cls(head, block_bias, header)

    def block_bounds(self) -> list[tuple[int, int]]:
        """[a, b) of each store's block of the features."""
        return _bounds(self.header.layout)

    def score(self, X, y, mask=None, per_model: bool = False) -> Scores:
        """The head's accuracy on raw features ``X`` (see :meth:`featcache.linear_head.LinearHead.score`)."""
        blocks = [(a, b, self.block_bias[k]) for k, (a, b) in enumerate(self.block_bounds())] if per_model else []
        return self.head.score(X, y, mask, blocks)

    def to(self, device: torch.device | str) -> SavedHead:
        return SavedHead(self.head.to(device), self.block_bias.to(device, copy=True), self.header)


def _bounds(layout) -> list[tuple[int, int]]:
    ends = [0]
    for block in layout:
        ends.append(ends[-1] + block.dim)
    return list(zip(ends[:-1], ends[1:], strict=True))


def check_head_path(path: str | os.PathLike) -> None:
    """Refuse a ``--save-head`` path that cannot take a head file, before any training.

    Raises:
        ConfigError: ``path`` is a directory, exists as something other than a regular file (a device or a pipe,
            which the head's rename would replace), or lies under a file.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--save-head {path} is a directory; give a file path, e.g. head.safetensors")
    if path.exists() and not path.is_file():
        raise ConfigError(f"--save-head {path} exists and is not a regular file (the head would replace it); give a "
                          "file path, e.g. head.safetensors")  # fmt: skip
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ConfigError(f"--save-head {path}: {above} is a file, not a directory; give a path in a directory")


def write_head(saved: SavedHead, path: str | os.PathLike) -> Path:
    """Write ``saved`` to ``path`` (parents created), atomically.

    Raises:
        ConfigError: ``path`` cannot be written (the message names it and why; see :func:`check_head_path`).
    """
    from safetensors.torch import save_file

    check_head_path(path)
    path = Path(path)
    h = saved.head
    tensors = {"weight": h.weight, "bias": h.bias, "block_bias": saved.block_bias}
    if h.mean is not None:
        tensors |= {"norm.mean": h.mean, "norm.scale": h.scale}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    meta = {META_KEY: json.dumps(saved.header.to_dict(), sort_keys=True)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, tmp, metadata=meta)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # the error that matters is the one above
            tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the head to {path}: {e.strerror or e}; free space or pass another "
                          "--save-head path") from None  # fmt: skip
    return path


def read_head(path: str | os.PathLike, device: torch.device | str = "cpu") -> SavedHead:
    """The saved head at ``path``, on ``device``.

    Raises:
        ConfigError: not a featcache head, of a newer format, or its tensors do not match its header.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = read_header(path)
    try:
        t = load_file(path)
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"--head {path}: cannot read its tensors ({e}); save the head again") from None
    C, D = len(header.classes), header.dim
    stats = ("norm.mean", "norm.scale") if header.norm != "none" else ()
    want = {"weight": (C, D), "bias": (C,), "block_bias": (len(header.layout), C)} | {k: (D,) for k in stats}
    for key, shape in want.items():
        if key not in t or tuple(t[key].shape) != shape:
            got = tuple(t[key].shape) if key in t else "missing"
            raise ConfigError(f"--head {path}: tensor {key} is {got}, its header says {shape}; save the head again")
        if not t[key].is_floating_point() or not torch.isfinite(t[key]).all():  # a probe never saves such a head
            raise ConfigError(f"--head {path}: tensor {key} holds NaN, Inf or non-float values; save the head again")
        t[key] = t[key].to(torch.float32)  # as written; a file converted to another precision scores in float32
    mean, scale = (t[k] for k in stats) if stats else (None, None)
    head = LinearHead(t["weight"], t["bias"], header.norm, mean, scale, header.eval_rows)
    return SavedHead(head, t["block_bias"], header).to(device)


class HeadModule(torch.nn.Module):
    """A saved head as a ``torch.nn.Module``: ``model(x)`` gives (N, C) logits of raw (N, D) features, in the
    arithmetic its probe scored with; ``model(x, block=k)`` the logits of store k's block alone;
    ``model.as_linear()`` one Linear on raw features, the normalisation folded in.

    Attributes:
        classes: the class names, in logit order.
        layout: the stores whose concatenated features it reads (:class:`featcache.head_layout.FeatureBlock`).
        probe: the probe record it comes from (id, key, dataset, splits, selection, test numbers).
    """

    def __init__(self, saved: SavedHead):
        super().__init__()
        h = saved.head
        self.norm, self.eval_rows = h.norm, h.eval_rows
        self.classes, self.layout = list(saved.header.classes), list(saved.header.layout)
        self.probe: dict[str, Any] = dict(saved.header.probe)
        self._bounds = saved.block_bounds()
        for name, value in (("weight", h.weight), ("bias", h.bias), ("block_bias", saved.block_bias),
                            ("mean", h.mean), ("scale", h.scale)):  # fmt: skip
            self.register_buffer(name, value)

    def linear_head(self) -> LinearHead:
        """The head's arithmetic on its buffers (where the module lives)."""
        return LinearHead(self.weight, self.bias, self.norm, self.mean, self.scale, self.eval_rows)

    @torch.no_grad()
    def as_linear(self) -> torch.nn.Linear:
        """The head as one ``torch.nn.Linear`` on raw features, its normalisation folded in (the same function; its
        logits differ from the module's by rounding only)."""
        w, b = self.weight, self.bias
        if self.norm != "none":  # W (x - mean) * inv = (W * inv) x - (W * inv) mean
            inv = torch.rsqrt(self.scale + BN_EPS) if self.norm == "batchnorm" else self.scale
            w = self.weight * inv
            b = self.bias - w @ self.mean
        out = torch.nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=w.dtype)
        out.weight.copy_(w)
        out.bias.copy_(b)
        return out.eval()

    def forward(self, x: torch.Tensor, block: int | None = None) -> torch.Tensor:
        head = self.linear_head()
        if block is None:
            return head.forward(x)
        a, b = self._bounds[block]
        return head.normalise(x)[:, a:b] @ self.weight[:, a:b].T + self.block_bias[block]


def load_head(path: str | os.PathLike, device: torch.device | str = "cpu") -> HeadModule:
    """The saved head at ``path`` as a ``torch.nn.Module`` (see :class:`HeadModule`), on ``device`` (``auto``: CUDA
    when visible, else the CPU).

    Raises:
        ConfigError: not a featcache head, of a newer format, or damaged; a device that is not one, or CUDA asked
            for where none is visible.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    return HeadModule(read_head(path, device)).eval()
