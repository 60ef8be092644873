"""State dicts to the keys of a backbone (see :mod:`featcache.checkpoints`, which reads the files).

:func:`clean_state_dict` removes the wrapper prefixes and renames every training framework adds;
:func:`match_state_dict` fits what is left to a backbone's own keys: it finds a uniform prefix (``model.``,
``backbone.``, ...), drops the removed classifier, and tells extra keys (an SSL projector) from keys of another
architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from torch import Tensor

from .errors import CheckpointError

__all__ = ["KeyMatch", "clean_state_dict", "listing", "match_state_dict"]

log = logging.getLogger("featcache.checkpoints")  # the logger these messages always had

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
# BatchNorm's num_batches_tracked only drives momentum=None updates in training; eval features
# ignore it, and older checkpoints predate it.
_OPTIONAL_SUFFIX = "num_batches_tracked"
_SHOW = 10  # keys listed in an error before "... (N in all)"


def listing(keys: Collection[str]) -> str:
    keys = list(keys)
    more = f" ... ({len(keys)} in all)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def clean_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
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


@dataclass(frozen=True)
class KeyMatch:
    """A state dict fitted to a backbone, and what was done to fit it."""

    state_dict: dict[str, Tensor]  # the backbone's keys only, ready for load_state_dict
    stripped_prefix: str  # the uniform prefix removed from the backbone's keys ("" when none)
    ignored_keys: tuple[str, ...]  # extra non-backbone keys left out (ignore_extra_keys)


def _prefixes(keys: Collection[str], need: Collection[str]) -> list[str]:
    """Candidate prefixes: whatever precedes one required key of the backbone in the file's keys."""
    anchor = min(need, key=lambda k: (k.count("."), k)) if need else ""
    found = {k[: len(k) - len(anchor)] for k in keys if anchor and k.endswith(anchor)}
    return sorted({""} | {p for p in found if p.endswith(".")}, key=lambda p: (len(p), p))


def match_state_dict(
    sd: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    *,
    classifier: Collection[str],
    where: str,
    arch: str,
    ignore_extra_keys: bool = False,
) -> KeyMatch:
    """Fit a cleaned state dict to a backbone's keys; refuse anything but an exact fit.

    The backbone's keys are looked for under every prefix that makes them fit (``""`` first, then
    ``model.``, ``backbone.``, ``model.backbone.`` and so on). Under the prefix that leaves none missing,
    keys of the removed classifier (``classifier``, e.g. ``fc.``) are dropped; other keys are *extra*
    when they lie outside the prefix or under a top-level name the backbone has no weights in
    (``projector.*``, an SSL ``head.*``), and *foreign* when they lie inside the backbone's own modules
    (``layer1.1.*`` for a one-block-per-stage net), which means another architecture.

    Args:
        sd: the state dict, after :func:`clean_state_dict`.
        expected: the backbone's own ``state_dict()``.
        classifier: module paths of the removed classifier, each ending in ``.`` (e.g. ``"fc."``).
        where: how to name the file in errors (``"checkpoint /path/x.pth"``).
        arch: the architecture, for errors.
        ignore_extra_keys: leave extra keys out (and record them) instead of refusing the file.

    Returns:
        A :class:`KeyMatch`.

    Raises:
        CheckpointError: the file holds keys of another architecture, lacks most of the backbone's keys or
            has other shapes (``--arch`` is probably wrong); lacks a few keys (an incomplete file); holds
            extra keys and ``ignore_extra_keys`` is False (``--ignore-extra-keys``); or the backbone fits
            under several prefixes (several networks in one file).
    """
    need = [k for k in expected if not k.endswith(_OPTIONAL_SUFFIX)]
    scored = []
    for prefix in _prefixes(sd, need):
        inside = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        scored.append((sum(k not in inside for k in need), prefix, inside))
    fits = [p for n, p, _ in scored if n == 0]
    if len(fits) > 1 and "" not in fits:
        raise CheckpointError(
            f"{where} holds several networks that fit {arch}, under {', '.join(map(repr, fits))}; "
            "save the one you want as its own state dict"
        )
    _, prefix, inside = min(scored, key=lambda s: (s[0], len(s[1])))

    own_names = {k.split(".", 1)[0] for k in expected}
    kept = {k: v for k, v in inside.items() if not k.startswith(tuple(classifier))}
    missing = [k for k in need if k not in kept]
    foreign = [k for k in kept if k not in expected and k.split(".", 1)[0] in own_names]
    fix = f"it is probably for another architecture than '{arch}'; fix --arch or the registry entry"
    after = f" (after stripping '{prefix}')" if prefix else ""
    # Another architecture: keys inside the backbone's own modules it lacks, or most of its keys absent.
    if foreign or 2 * len(missing) > len(need):
        found = (("missing", missing), ("unexpected", foreign))
        parts = [f"{what} keys: {listing(keys)}" for what, keys in found if keys]
        raise CheckpointError(f"{where} does not match {arch}{after}: {'; '.join(parts)}; {fix}")
    shapes = {k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in kept.items() if k in expected}
    wrong = [f"{k} {got} vs {want}" for k, (got, want) in shapes.items() if got != want]
    if wrong:
        raise CheckpointError(f"{where} has shapes (file vs {arch}) that differ: {listing(wrong)}; {fix}")
    if missing:
        raise CheckpointError(
            f"{where} lacks {len(missing)} of the {len(need)} weights of {arch}{after}, missing keys: "
            f"{listing(missing)}; the file is incomplete or from a modified network: save it again, or fix --arch"
        )

    extra = [prefix + k for k in kept if k not in expected] + [k for k in sd if not k.startswith(prefix)]
    if extra and not ignore_extra_keys:
        raise CheckpointError(
            f"{where} has keys that are not part of {arch}: {listing(sorted(extra))}; "
            "pass --ignore-extra-keys to load the backbone without them"
        )
    if prefix:
        log.info("%s: backbone keys found under the prefix '%s'", where, prefix)
    if extra:
        log.info("%s: ignoring %d extra keys: %s", where, len(extra), listing(sorted(extra)))
    return KeyMatch({k: v for k, v in kept.items() if k in expected}, prefix, tuple(sorted(extra)))
