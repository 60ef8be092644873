"""Backbones: one registry, one builder, one loading path, for torchvision, timm and featcache's own nets.

Architectures (``--arch``): every torchvision classification model (``resnet50``, ``vit_b_16``,
``convnext_tiny``, ...), featcache's ``resnet10``, SwAV's ``resnet50w2``/``w4``/``w5`` and the SEER trunks
``seer_regnet_y_{32,64,128,256}gf`` (:mod:`featcache.backbones`, in their checkpoints' own key layouts), all in the
registry :func:`register_backbone` fills; and ``timm:<name>`` for any timm model, with an optional pretrained tag
(``timm:vit_small_patch16_224.augreg_in1k``) that picks the preprocessing; timm is the optional
extra ``pip install 'featcache[timm]'``. Networks are built randomly initialised (nothing is
downloaded) and a checkpoint file fills them.

Features are the pre-logits vector by default (:data:`FEATURE_LAYER`), the input of the final classifier:
torchvision's last Linear (SqueezeNet's 1x1 conv) becomes ``nn.Identity()``, timm's classifier is
reset to ``num_classes=0``. ``layers=`` takes pooled outputs of inner modules instead
(:mod:`featcache.layers`). Checkpoints of every family load through :mod:`featcache.checkpoints`.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torchvision.models as tvm
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from .backbones import regnet, swav
from .checkpoints import check_step, clean_state_dict, file_sha256, load_checkpoint, load_state_dict, match_state_dict
from .config import CheckpointSpec, TransformSpec
from .empty_init import build_empty, fill_left_out
from .errors import ConfigError, unknown_name
from .layers import DEFAULT_POOL, POOLS, LayerFeatures
from .transforms import INTERPOLATIONS

__all__ = [
    "FEATURE_LAYER",
    "POOLS",
    "FeatureNet",
    "LoadedBackbone",
    "register_backbone",
    "list_backbones",
    "build_features",
    "build_backbone",
    "resolve_preprocessing",
    "load_backbone",
    # re-exported from featcache.checkpoints
    "file_sha256",
    "load_state_dict",
    "clean_state_dict",
]

log = logging.getLogger(__name__)

FEATURE_LAYER = "avgpool"  # recorded in stores for the default features: the input of the removed classifier
TIMM_EXTRA = "pip install 'featcache[timm]'"
# The research checkpoints' architectures: trained and probed with the dataset presets (CIFAR mean/std
# etc.), so they define no preprocessing of their own.
_RESEARCH = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
             "wide_resnet101_2", "resnext50_32x4d")  # fmt: skip
# Classifier layer type -> the attribute holding its input width.
_CLASSIFIER_WIDTH = {nn.Linear: "in_features", nn.Conv2d: "in_channels"}


@dataclass(frozen=True)
class _Arch:
    """How to build one architecture, take its classifier off and preprocess its input."""

    build: Callable[[], nn.Module]  # the classification network, randomly initialised
    behead: Callable[[nn.Module], int]  # removes the classifier in place; returns the pre-logits width
    preprocessing: Callable[[], TransformSpec | None]  # its own eval preprocessing; None: it defines none
    heads: tuple[str, ...] = ()  # module paths of training heads its checkpoints hold besides the backbone (SwAV's)


_BACKBONES: dict[str, _Arch] = {}


def _no_preprocessing() -> None:
    return None


def _replace_classifier(net: nn.Module) -> int:
    # torchvision registers the classifier last in every classification model (all 80 of 0.29 checked):
    # the last Linear/Conv2d. Nothing follows it in forward but SqueezeNet's ReLU and global pooling of
    # an already non-negative map, so Identity in its place returns exactly its (pooled) input.
    heads = [(n, m) for n, m in net.named_modules() if isinstance(m, tuple(_CLASSIFIER_WIDTH))]
    if not heads:
        raise ConfigError(f"{type(net).__name__} has no Linear or Conv2d classifier to take off")
    name, head = heads[-1]
    width = next(getattr(head, a) for t, a in _CLASSIFIER_WIDTH.items() if isinstance(head, t))
    net.set_submodule(name, nn.Identity())
    return int(width)


def register_backbone(
    name: str, *, preprocessing: Callable[[], TransformSpec | None] | None = None, heads: tuple[str, ...] = ()
) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Decorator registering a zero-argument factory that returns a randomly initialised classifier network.

    The network's final classifier must be its last ``nn.Linear`` (or 1x1 ``nn.Conv2d``) in registration
    order, as in every torchvision model; the builder replaces it by ``nn.Identity()``.

    Args:
        name: the architecture name used by ``--arch`` and the checkpoint registry.
        preprocessing: returns the architecture's own eval preprocessing; None when it has none.
        heads: module paths (ending in ``.``) of training heads that checkpoints of this architecture hold besides
            the backbone (SwAV's ``projection_head.``, ``prototypes.``): dropped on loading, as the classifier is.

    Returns:
        The decorator; it returns the factory unchanged.

    Raises:
        ConfigError: ``name`` is already registered.
    """

    def decorate(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _BACKBONES:
            raise ConfigError(f"backbone '{name}' is registered twice")
        _BACKBONES[name] = _Arch(factory, _replace_classifier, preprocessing or _no_preprocessing, tuple(heads))
        return factory

    return decorate


def _spec_or_refuse(arch: str, name: str, problems: list[str], **fields) -> TransformSpec:
    if fields["interpolation"] not in INTERPOLATIONS:
        problems.append(f"interpolation '{fields['interpolation']}'")
    if problems:
        raise ConfigError(
            f"the preprocessing of {arch} ({name}) has {', '.join(problems)}, which featcache's "
            "Resize(shorter side) -> CenterCrop -> Normalize cannot express; pass --transform to pick a preset"
        )
    return TransformSpec(name=name, **fields)


def _torchvision_preprocessing(name: str) -> Callable[[], TransformSpec]:
    def resolve() -> TransformSpec:
        weights = tvm.get_model_weights(name).DEFAULT
        t = weights.transforms()  # an ImageClassification preset: only numbers, nothing is downloaded
        sizes = {"resize": t.resize_size, "crop": t.crop_size}
        problems = [f"{k} {v}" for k, v in sizes.items() if len(v) != 1] + ([] if t.antialias else ["no antialias"])
        return _spec_or_refuse(
            name, f"torchvision:{weights}", problems, resize=sizes["resize"][0], crop=sizes["crop"][0],
            interpolation=t.interpolation.value, mean=tuple(t.mean), std=tuple(t.std),
        )  # fmt: skip

    return resolve


def _torchvision(name: str) -> Callable[[], nn.Module]:
    # weights=None: nothing is ever downloaded; checkpoints supply the weights.
    return lambda: tvm.get_model(name, weights=None)


for _name in tvm.list_models(module=tvm):  # the classification models only
    _own = None if _name in _RESEARCH else _torchvision_preprocessing(_name)
    register_backbone(_name, preprocessing=_own)(_torchvision(_name))


@register_backbone("resnet10")
def _resnet10() -> nn.Module:
    # A tiny 512-d net for the demo and the tests; not in torchvision's registry.
    return ResNet(BasicBlock, [1, 1, 1, 1])


# The research code's other trunks; like its ResNets, they take the dataset preset.
for _name, _factory in swav.ARCHS.items():
    register_backbone(_name, heads=swav.HEADS)(_factory)
for _name, _factory in regnet.ARCHS.items():
    register_backbone(_name)(_factory)


def _import_timm(arch: str) -> ModuleType:
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ConfigError(f"--arch {arch} needs timm, which is not installed; {TIMM_EXTRA}") from None


def _reset_classifier(net: nn.Module) -> int:
    net.reset_classifier(0)
    # head_hidden_size: the width after a head's own pre-logits layer (MobileNetV3's 1024-d conv_head)
    return int(getattr(net, "head_hidden_size", None) or net.num_features)


def _timm_preprocessing(timm: ModuleType, arch: str, cfg: object) -> TransformSpec | None:
    if cfg is None:  # an architecture without a pretrained config defines no preprocessing
        return None
    data = timm.data.resolve_data_config({}, pretrained_cfg=cfg.to_dict())  # timm's own defaults fill gaps
    chans, height, width = data["input_size"]
    problems = [f"{chans} input channels"] * (chans != 3) + [f"a {height}x{width} input"] * (height != width)
    problems += [f"crop_mode '{data['crop_mode']}'"] * (data["crop_mode"] != "center")
    return _spec_or_refuse(
        arch, f"timm:{cfg.architecture}" + (f".{cfg.tag}" if cfg.tag else ""), problems,
        resize=math.floor(height / data["crop_pct"]),  # as timm's transforms_imagenet_eval
        crop=height, interpolation=data["interpolation"], mean=tuple(data["mean"]), std=tuple(data["std"]),
    )  # fmt: skip


def _timm_arch(name: str) -> _Arch:
    arch = f"timm:{name}"
    timm = _import_timm(arch)
    if not timm.is_model(name):
        raise unknown_name("timm architecture", name, timm.list_models(), "fix --arch timm:<name>")
    try:
        cfg = timm.models.get_pretrained_cfg(name)  # the tag's config, or the architecture's default tag
    except RuntimeError:
        tags = timm.list_pretrained(name.split(".", 1)[0] + ".*")
        raise unknown_name("timm pretrained tag", name, tags, "fix --arch timm:<name>.<tag>") from None
    return _Arch(
        lambda: timm.create_model(name, pretrained=False), _reset_classifier,
        lambda: _timm_preprocessing(timm, arch, cfg),
    )  # fmt: skip


# "<family>:<name>" architectures, resolved by their family rather than listed in the registry.
_FAMILIES: dict[str, Callable[[str], _Arch]] = {"timm": _timm_arch}


def _resolve(arch: str) -> _Arch:
    family, sep, name = arch.partition(":")
    if sep:
        if family not in _FAMILIES:
            raise unknown_name("architecture family", family, _FAMILIES, f"in --arch {arch}")
        return _FAMILIES[family](name)
    if arch not in _BACKBONES:
        hint = "fix --arch or the registry entry; timm models are named timm:<name>"
        try:
            if importlib.import_module("timm").is_model(arch):
                hint = f"timm has it: use --arch timm:{arch}"
        except ImportError:
            pass
        raise unknown_name("architecture", arch, _BACKBONES, hint)
    return _BACKBONES[arch]


def list_backbones() -> list[str]:
    """Sorted names of every registered architecture (``timm:<name>`` architectures come on top of these)."""
    return sorted(_BACKBONES)


def resolve_preprocessing(arch: str) -> TransformSpec | None:
    """The architecture's own eval preprocessing, when it defines one; read without building or downloading.

    timm models: the pretrained config of the tag in ``arch`` (else the default tag), resolved by timm's
    ``resolve_data_config``; resize is ``floor(size / crop_pct)``. torchvision models: the ``DEFAULT``
    weights' ``transforms()``. The research ResNets and ``resnet10`` return None: the dataset preset applies.

    Args:
        arch: an architecture name, as for :func:`build_features`.

    Returns:
        A :class:`TransformSpec` named after its source (``timm:vit_small_patch16_224.augreg_in21k_ft_in1k``,
        ``torchvision:ViT_B_16_Weights.IMAGENET1K_V1``), or None.

    Raises:
        ConfigError: unknown architecture, timm missing, or a preprocessing a TransformSpec cannot express
            (crop_mode squash/border, a non-square input, other interpolations): pass ``--transform``.
    """
    return _resolve(arch).preprocessing()


@dataclass(frozen=True)
class FeatureNet:
    """A randomly initialised network that returns features, and where a checkpoint's weights go."""

    arch: str
    module: nn.Module  # eval mode; forward -> (B, D) for one layer, a tuple of (B, D_i) for several
    layers: tuple[str, ...]  # (FEATURE_LAYER,) for the pre-logits vector
    pool: str | None  # None for the pre-logits vector: the network's own pooling
    feature_dims: tuple[int, ...]  # one per layer
    backbone: nn.Module  # the classifier-less network inside `module`: checkpoints fill its state dict
    classifier: tuple[str, ...]  # module paths of the removed classifier ("fc."): expected checkpoint extras

    @property
    def feature_dim(self) -> int:
        """Width of all layers together."""
        return sum(self.feature_dims)


def build_features(
    arch: str, *, layers: Sequence[str] | str = (), pool: str | None = None, input_size: int | None = None
) -> FeatureNet:
    """Build ``arch`` randomly initialised, without its classifier, returning the features asked for.

    Args:
        arch: a name from :func:`list_backbones` or ``timm:<name>``.
        layers: module names whose pooled outputs are the features (one forward pass for all);
            empty for the pre-logits vector. A single name may be given as a string.
        pool: how layer outputs are pooled (:data:`POOLS`; default ``avg``). Only with ``layers``.
        input_size: the side of the square crops the network will see (the extraction's crop); default the
            model's input size (timm's config, else 224).

    Returns:
        A :class:`FeatureNet` in eval mode. Widths are read from the network: the classifier's input
        width, or for layers dummy forward passes at ``input_size``.

    Raises:
        ConfigError: unknown architecture (closest names suggested; with the install hint when timm is
            missing), unknown layer or pool, or a pool that does not fit a layer's output.
    """
    entry = _resolve(arch)
    net = entry.build()
    before = set(net.state_dict())
    width = entry.behead(net)
    classifier = tuple(sorted({k.rsplit(".", 1)[0] + "." for k in before - set(net.state_dict())})) + entry.heads
    net.eval()
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    if not layers:
        if pool is not None:
            raise ConfigError(f"--pool {pool} needs --layer: the default features use the network's own pooling")
        return FeatureNet(arch, net, (FEATURE_LAYER,), None, (width,), net, classifier)
    size = (getattr(net, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[-2:]
    size = (input_size, input_size) if input_size else size
    taps = LayerFeatures(net, layers, pool or DEFAULT_POOL, tuple(size), arch).eval()
    return FeatureNet(arch, taps, taps.layers, taps.pool, taps.feature_dims, net, classifier)


def build_backbone(arch: str) -> tuple[nn.Module, int]:
    """The pre-logits network of ``arch`` and its width: :func:`build_features` without layers.

    Raises:
        ConfigError: see :func:`build_features`.
    """
    net = build_features(arch)
    return net.module, net.feature_dim


@dataclass(frozen=True)
class LoadedBackbone:
    """A frozen, eval-mode backbone with the provenance a feature store records.

    ``module`` returns ``(B, feature_dim)``, or with several ``layers`` a tuple of ``(B, feature_dims[i])``;
    ``layer`` is then the comma-joined names and ``feature_dim`` their total width.
    """

    name: str
    arch: str
    module: nn.Module
    feature_dim: int
    sha256: str
    path: Path
    layer: str = FEATURE_LAYER
    layers: tuple[str, ...] = (FEATURE_LAYER,)
    pool: str | None = None  # None: the network's own pooling (the default features)
    feature_dims: tuple[int, ...] = ()
    stripped_prefix: str = ""  # uniform key prefix removed to fit the backbone (Lightning's "model.", ...)
    ignored_keys: tuple[str, ...] = ()  # extra keys left out under ignore_extra_keys


def load_backbone(
    spec: CheckpointSpec,
    *,
    trust: bool = False,
    layers: Sequence[str] | str = (),
    pool: str | None = None,
    ignore_extra_keys: bool = False,
    ema_source: str | None = None,
    input_size: int | None = None,
) -> LoadedBackbone:
    """Build ``spec.arch`` and load ``spec.path`` into it, refusing anything but an exact match.

    Args:
        spec: the checkpoint; ``spec.ema`` selects the EMA weights; ``spec.steps``, when set, must be the training
            step the file records, if it records one (AlgoPerf's ``global_step``).
        trust: passed to :func:`load_state_dict` (``--trust-checkpoint``).
        layers, pool, input_size: the features, as for :func:`build_features`.
        ignore_extra_keys: load a file that also holds non-backbone weights (an SSL projector) without
            them (``--ignore-extra-keys``); they are listed in ``ignored_keys``.
        ema_source: who asked for ``spec.ema`` (``"registry"`` or ``"option"``), to word the error
            when the file has no EMA weights.

    Returns:
        The loaded backbone, in eval mode with ``requires_grad`` off, and its provenance.

    Raises:
        ConfigError: ``spec.arch`` is None or unknown, or the layers/pool are invalid.
        CheckpointError: see :func:`load_state_dict`; also a recorded training step other than ``spec.steps``,
            missing keys, keys or shapes of another
            architecture, extra keys (unless ``ignore_extra_keys``): see
            :func:`~featcache.checkpoints.match_state_dict`.
    """
    if spec.arch is None:
        raise ConfigError(f"checkpoint '{spec.name}' ({spec.path}) has no architecture; pass --arch")
    # built empty where it can be: the checkpoint's tensors become its weights (no random init, no copy)
    net = None if layers else build_empty(lambda: build_features(spec.arch), ConfigError)
    empty, net = net is not None, net or build_features(spec.arch, layers=layers, pool=pool, input_size=input_size)
    raw, step = load_checkpoint(spec.path, trust=trust, ema=spec.ema, ema_source=ema_source)
    check_step(spec.path, step, spec.steps, spec.steps_source)  # a checkpoint of another length: not what the row says
    sd = clean_state_dict(raw)
    expected = net.backbone.state_dict()
    fit = match_state_dict(
        sd, expected, classifier=net.classifier, where=f"checkpoint {spec.path}", arch=spec.arch,
        ignore_extra_keys=ignore_extra_keys,
    )  # fmt: skip
    # in the network's own dtypes, as a copy into its tensors would convert them
    weights = OrderedDict((k, v.to(expected[k].dtype)) for k, v in fit.state_dict.items())
    # Versioned modules (MNASNet) read their layout version from the metadata, which cleaning drops; the
    # file fits this network's keys and shapes, so it has this network's layout.
    weights._metadata = getattr(expected, "_metadata", None)
    net.backbone.load_state_dict(weights, strict=False, assign=empty)  # strict but for num_batches_tracked
    if empty:
        fill_left_out(net.backbone)
    net.module.requires_grad_(False)
    sha = file_sha256(spec.path)
    log.info("loaded %s (%s, %s, %d-d) from %s sha256=%s", spec.name, spec.arch, ",".join(net.layers),
             net.feature_dim, spec.path, sha[:12])  # fmt: skip
    return LoadedBackbone(
        spec.name, spec.arch, net.module.eval(), net.feature_dim, sha, Path(spec.path), ",".join(net.layers),
        net.layers, net.pool, net.feature_dims, fit.stripped_prefix, fit.ignored_keys,
    )  # fmt: skip
