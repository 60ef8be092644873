"""Features from inner modules: forward hooks on named layers, pooled to one vector per image.

:class:`LayerFeatures` wraps a backbone; one forward pass returns the pooled output of every requested
module. How an output is pooled is the ``pool`` of :data:`POOLS`:

- ``avg`` (default): global average pooling. A ``(B, C, H, W)`` map gives ``(B, C)``; a ``(B, N, C)``
  token sequence gives the mean of all ``N`` tokens; a ``(B, D)`` output is kept as it is.
- ``avg-nhwc``: global average pooling of a channels-last ``(B, H, W, C)`` map (Swin stages, the
  inside of ConvNeXt blocks). Four-dimensional outputs are read as ``(B, C, H, W)`` otherwise: the
  layout cannot be told from the shape, so pick this pool for channels-last layers.
- ``cls``: the first token of a ``(B, N, C)`` sequence (a ViT's class token).
- ``mean-patch``: the mean of the patch tokens of a ``(B, N, C)`` sequence, after the model's prefix
  tokens (class, distillation and register tokens: timm's ``num_prefix_tokens``; 1 for torchvision's ViT).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import ConfigError, unknown_name

__all__ = ["DEFAULT_POOL", "POOLS", "LayerFeatures", "prefix_tokens"]


@dataclass(frozen=True)
class _Pool:
    fn: Callable[[Tensor, int], Tensor]  # (output, number of prefix tokens) -> (B, D)
    shapes: tuple[int, ...]  # accepted output ranks
    needs: str  # what it takes, for errors


POOLS: dict[str, _Pool] = {
    "avg": _Pool(lambda x, _: x if x.ndim == 2 else x.mean(dim=(2, 3) if x.ndim == 4 else 1), (2, 3, 4),
                 "(B, D) vectors, (B, N, C) tokens or (B, C, H, W) maps"),
    "avg-nhwc": _Pool(lambda x, _: x.mean(dim=(1, 2)), (4,), "(B, H, W, C) maps"),
    "cls": _Pool(lambda x, _: x[:, 0], (3,), "(B, N, C) tokens"),
    "mean-patch": _Pool(lambda x, n: x[:, n:].mean(dim=1), (3,), "(B, N, C) tokens"),
}  # fmt: skip
DEFAULT_POOL = "avg"


def prefix_tokens(model: nn.Module) -> int:
    """Tokens before the patch tokens in ``model``'s sequences: timm's ``num_prefix_tokens``, else 1 for a
    model with a class-token parameter (torchvision's ``class_token``), else 0."""
    count = getattr(model, "num_prefix_tokens", None)
    if isinstance(count, int):
        return count
    return int(any(isinstance(getattr(model, a, None), nn.Parameter) for a in ("class_token", "cls_token")))


class LayerFeatures(nn.Module):
    """A backbone whose forward returns the pooled outputs of named inner modules, from one pass.

    A module called several times in one forward (a shared ReLU) contributes its last output.

    Args:
        backbone: the network; its own output is discarded.
        layers: module names (``backbone.named_modules()``), in output order.
        pool: a name from :data:`POOLS`.
        input_size: ``(H, W)`` of the dummy image used to check each layer's output and read its width: the
            size of the crops the network will see.
        arch: the architecture, for errors.

    Raises:
        ConfigError: an unknown or repeated layer name, an unknown pool, or a layer whose output the pool
            does not take (a tuple, a tensor of another rank, or a pooled width that changes with the image
            size: a channels-first map pooled as channels-last, or the other way round).
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[str], pool: str, input_size: tuple[int, int], arch: str):
        super().__init__()
        if pool not in POOLS:
            raise unknown_name("pool", pool, POOLS, "fix --pool")
        modules = dict(backbone.named_modules())
        del modules[""]  # the whole network is not a layer
        for name in layers:
            if name not in modules:
                raise unknown_name("layer", name, modules, f"fix --layer: a module name of {arch}")
        if len(set(layers)) != len(layers) or not layers:
            raise ConfigError(f"--layers {','.join(layers)!r} must name each layer once, at least one")
        self.backbone, self.layers, self.pool = backbone, tuple(layers), pool
        self.prefix_tokens = prefix_tokens(backbone)
        self._outputs: dict[str, Tensor] = {}
        for name in self.layers:
            # a partial of a bound method, not a closure: copy.deepcopy then rebinds it to the copy
            modules[name].register_forward_hook(functools.partial(self._keep, name))
        self.feature_dims = self._check(input_size, arch)

    def _keep(self, name: str, module: nn.Module, args: object, output: object) -> None:
        self._outputs[name] = output

    def _outputs_at(self, size: tuple[int, int]) -> dict[str, object]:
        with torch.no_grad():
            self.backbone(torch.zeros(1, 3, *size))
        outputs, self._outputs = self._outputs, {}
        return outputs

    def _check(self, input_size: tuple[int, int], arch: str) -> tuple[int, ...]:
        outputs = self._outputs_at(input_size)
        pool = POOLS[self.pool]
        for name in self.layers:
            out = outputs.get(name)
            if not isinstance(out, Tensor):
                raise ConfigError(
                    f"layer '{name}' of {arch} returns {type(out).__name__}, not a tensor; pick another --layer"
                )
            if out.ndim not in pool.shapes:
                shape = ", ".join(["B", *map(str, out.shape[1:])])
                raise ConfigError(
                    f"layer '{name}' of {arch} gives ({shape}); --pool {self.pool} takes {pool.needs}: "
                    f"choose --pool from {', '.join(p for p, v in POOLS.items() if out.ndim in v.shapes)}"
                )
        widths = tuple(int(t.shape[-1]) for t in self._pooled(outputs))
        self._check_layout(outputs, widths, input_size, arch)
        return widths

    def _check_layout(self, outputs: dict, widths: tuple[int, ...], input_size: tuple[int, int], arch: str) -> None:
        # A map's layout cannot be told from one shape, but a pooled width is the channel count, which does not
        # change with the image size; one that does is a spatial axis: the pool averaged the wrong axes.
        other = (input_size[0] + 32, input_size[1] + 32)
        try:
            again = tuple(int(t.shape[-1]) for t in self._pooled(self._outputs_at(other)))
        except Exception:  # noqa: BLE001 - a network of one fixed input size (a ViT): nothing to compare with
            self._outputs = {}
            return
        fix = "avg (the map is channels-first)" if self.pool == "avg-nhwc" else "avg-nhwc (the map is channels-last)"
        for name, a, b in zip(self.layers, widths, again, strict=True):
            if a != b and outputs[name].ndim == 4:
                shape = ", ".join(["B", *map(str, outputs[name].shape[1:])])
                raise ConfigError(
                    f"layer '{name}' of {arch} gives ({shape}) at {input_size[0]}x{input_size[1]} px, and --pool "
                    f"{self.pool} makes {a} features of it there but {b} at {other[0]}x{other[1]}: it averages the "
                    f"channels, not the positions; use --pool {fix}"
                )

    def _pooled(self, outputs: dict[str, Tensor]) -> tuple[Tensor, ...]:
        fn = POOLS[self.pool].fn
        return tuple(fn(outputs[name], self.prefix_tokens) for name in self.layers)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        """``(B, 3, H, W)`` -> ``(B, D)`` for one layer, a tuple of ``(B, D_i)`` (in ``layers`` order) for several."""
        self.backbone(x)
        outputs, self._outputs = self._outputs, {}  # hold no activations between batches
        pooled = self._pooled(outputs)
        return pooled[0] if len(pooled) == 1 else pooled

    def extra_repr(self) -> str:
        return f"layers={self.layers}, pool={self.pool!r}, feature_dims={self.feature_dims}"
