"""Backbones and checkpoints: one registry, one builder, one loading path.

A backbone is a torchvision ResNet whose ``fc`` is replaced by ``nn.Identity()``, so its forward returns
the global-average-pooled penultimate vector (:data:`FEATURE_LAYER`). Checkpoints in the torchvision,
PyTorch ImageNet-example, research (``module.model0.``), AlgoPerf and timm formats are normalized by
:func:`load_state_dict` and :func:`clean_state_dict`, then loaded strictly (``fc.*`` aside) by
:func:`load_backbone`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from .config import CheckpointSpec
from .errors import CheckpointError, ConfigError, unknown_name

__all__ = [
    "FEATURE_LAYER",
    "LoadedBackbone",
    "register_backbone",
    "list_backbones",
    "build_backbone",
    "file_sha256",
    "load_state_dict",
    "clean_state_dict",
    "load_backbone",
]

log = logging.getLogger(__name__)

FEATURE_LAYER = "avgpool"  # recorded in stores: features are the pooled input of the (removed) classifier

_BACKBONES: dict[str, Callable[[], nn.Module]] = {}

# Where the state dict sits inside a checkpoint dict, in priority order (``state_dict_ema`` is tried
# first, and required, only when EMA weights are asked for).
_CONTAINER_KEYS = (
    "model_params",  # AlgoPerf (the seed's checkpoints)
    "state_dict",  # PyTorch ImageNet example (`main.py`), timm
    "model",  # DeiT/MAE-style training scripts
)
_EMA_KEY = "state_dict_ema"  # timm's ModelEmaV2 copy

# Key prefixes added by wrappers; stripped repeatedly because AlgoPerf saves both
# `_orig_mod.module.` and `module._orig_mod.` orders. Longer prefixes come first.
_PREFIXES = (
    "module.model0.",  # the research code's multi-model wrapper, under DDP
    "module.",  # DistributedDataParallel / DataParallel
    "_orig_mod.",  # torch.compile's OptimizedModule
)
# AlgoPerf's ResNet names the shortcut's layers; torchvision's is an nn.Sequential.
_RENAMES = (
    ("downsample.conv.", "downsample.0."),
    ("downsample.bn.", "downsample.1."),
)
_CLASSIFIER_PREFIX = "fc."  # expected extras: the backbone has no classifier
_SHOW = 10  # keys listed in an error before "... (N in all)"


@dataclass(frozen=True)
class LoadedBackbone:
    """A frozen, eval-mode backbone with the provenance a feature store records."""

    name: str
    arch: str
    module: nn.Module
    feature_dim: int
    sha256: str
    path: Path
    layer: str = FEATURE_LAYER


def register_backbone(name: str) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Decorator registering a zero-argument factory that returns a randomly initialised network.

    Args:
        name: the architecture name used by ``--arch`` and the checkpoint registry.

    Returns:
        The decorator; it returns the factory unchanged.

    Raises:
        ConfigError: ``name`` is already registered.
    """

    def decorate(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _BACKBONES:
            raise ConfigError(f"backbone '{name}' is registered twice")
        _BACKBONES[name] = factory
        return factory

    return decorate


def _torchvision(name: str) -> Callable[[], nn.Module]:
    builder = getattr(tvm, name)
    # weights=None: nothing is ever downloaded; checkpoints supply the weights.
    return lambda: builder(weights=None)


_TORCHVISION = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
)
for _name in _TORCHVISION:
    register_backbone(_name)(_torchvision(_name))


@register_backbone("resnet10")
def _resnet10() -> nn.Module:
    # A tiny 512-d net for the demo and the tests; not in torchvision's registry.
    return ResNet(BasicBlock, [1, 1, 1, 1])


def list_backbones() -> list[str]:
    """Sorted names of every registered architecture."""
    return sorted(_BACKBONES)


def build_backbone(arch: str) -> tuple[nn.Module, int]:
    """Build a randomly initialised backbone whose forward returns pooled penultimate features.

    Args:
        arch: a name from :func:`list_backbones`.

    Returns:
        ``(module, feature_dim)``: the network in eval mode with ``fc`` replaced by ``nn.Identity()``,
        and the width of its output, read from the replaced ``fc.in_features``.

    Raises:
        ConfigError: ``arch`` is not registered (the closest names are suggested).
    """
    if arch not in _BACKBONES:
        raise unknown_name("architecture", arch, _BACKBONES, "fix --arch or the registry entry")
    module = _BACKBONES[arch]()
    feature_dim = int(module.fc.in_features)
    module.fc = nn.Identity()
    return module.eval(), feature_dim


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks so large checkpoints are not held in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _unsafe_global(message: str) -> str:
    found = re.search(r"GLOBAL (\S+) was not an allowed global", message)
    if found:
        return f"it holds the unsafe global {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", message)
    return found.group(1).strip().rstrip(".") if found else "it holds objects other than tensors"


def load_state_dict(path: str | os.PathLike, *, trust: bool = False, ema: bool = False) -> dict[str, Tensor]:
    """Read a checkpoint file and return the state dict inside it, keys as saved.

    Args:
        path: the checkpoint file.
        trust: unpickle arbitrary Python objects (``weights_only=False``); only for files you trust.
        ema: return the ``state_dict_ema`` weights instead of the regular ones.

    Returns:
        The state dict found under the first container key present (see ``_CONTAINER_KEYS``),
        or the top-level dict itself when all its values are tensors.

    Raises:
        CheckpointError: the file is missing or corrupt, holds objects the weights-only unpickler
            refuses (and ``trust`` is False), lacks the EMA weights asked for, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} not found; check the path or the registry entry")
    try:
        # Research .pth.tar files often keep the training `args` Namespace; allow just that (as timm does).
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=not trust)
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

    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of weights")
    if ema and _EMA_KEY not in obj:
        raise CheckpointError(
            f"checkpoint {path} has no '{_EMA_KEY}' (top-level keys: {_listing(sorted(map(str, obj)))}); "
            "drop 'ema: true' from its registry entry"
        )
    for key in [_EMA_KEY] if ema else _CONTAINER_KEYS:
        if _is_state_dict(obj.get(key)):
            log.debug("checkpoint %s: state dict under '%s'", path, key)
            return obj[key]
    if _is_state_dict(obj):
        return obj
    raise CheckpointError(
        f"no state dict found in checkpoint {path}: top-level keys {_listing(sorted(map(str, obj)))}; "
        f"expected one of {list(_CONTAINER_KEYS)} or a plain state dict"
    )


def clean_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip wrapper prefixes until none applies, then rename AlgoPerf's downsample layers.

    Args:
        sd: a state dict as saved.

    Returns:
        A new dict with torchvision key names (``module._orig_mod.layer1.0.downsample.conv.weight``
        becomes ``layer1.0.downsample.0.weight``).

    Raises:
        CheckpointError: two keys clean to the same name.
    """
    out: dict[str, Tensor] = {}
    for raw, value in sd.items():
        key = raw
        while prefix := next((p for p in _PREFIXES if key.startswith(p)), None):
            key = key[len(prefix) :]
        for old, new in _RENAMES:
            key = key.replace(old, new)
        if key in out:
            raise CheckpointError(f"state dict keys collide after cleaning: '{raw}' and another give '{key}'")
        out[key] = value
    return out


def _listing(keys: list[str]) -> str:
    more = f" ... ({len(keys)} in all)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def load_backbone(spec: CheckpointSpec, *, trust: bool = False) -> LoadedBackbone:
    """Build ``spec.arch`` and load ``spec.path`` into it, refusing anything but an exact match.

    Args:
        spec: the checkpoint; ``spec.ema`` selects the EMA weights.
        trust: passed to :func:`load_state_dict` (``--trust-checkpoint``).

    Returns:
        The loaded backbone, in eval mode with ``requires_grad`` off, and its provenance.

    Raises:
        ConfigError: ``spec.arch`` is None or not registered.
        CheckpointError: see :func:`load_state_dict`; also any missing or unexpected key (``fc.*``
            aside) or shape mismatch, which usually means the file is for another architecture.
    """
    if spec.arch is None:
        raise ConfigError(f"checkpoint '{spec.name}' ({spec.path}) has no architecture; pass --arch")
    module, feature_dim = build_backbone(spec.arch)
    sd = clean_state_dict(load_state_dict(spec.path, trust=trust, ema=spec.ema))
    sd = {k: v for k, v in sd.items() if not k.startswith(_CLASSIFIER_PREFIX)}

    expected = module.state_dict()
    fix = f"it is probably for another architecture than '{spec.arch}'; fix --arch or the registry entry"
    # BatchNorm's num_batches_tracked only drives momentum=None updates in training; eval features
    # ignore it, and older checkpoints predate it.
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        found = (("missing", missing), ("unexpected", unexpected))
        parts = [f"{what} keys: {_listing(keys)}" for what, keys in found if keys]
        raise CheckpointError(f"checkpoint {spec.path} does not match {spec.arch}: {'; '.join(parts)}; {fix}")
    shapes = {k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in sd.items()}
    wrong = [f"{k} {got} vs {want}" for k, (got, want) in shapes.items() if got != want]
    if wrong:
        raise CheckpointError(
            f"checkpoint {spec.path} has shapes (file vs {spec.arch}) that differ: {_listing(wrong)}; {fix}"
        )

    module.load_state_dict(sd, strict=False)
    module.requires_grad_(False)
    sha = file_sha256(spec.path)
    log.info("loaded %s (%s, %d-d) from %s sha256=%s", spec.name, spec.arch, feature_dim, spec.path, sha[:12])
    return LoadedBackbone(spec.name, spec.arch, module.eval(), feature_dim, sha, Path(spec.path))
