"""The names an option may take, in one torch-free place: ``click.Choice`` and the config dataclasses read them.

The library tables keyed by these names (``devices.PRECISIONS``, ``layers.POOLS``, ``loaders.BACKENDS``,
``heads.HEADS``, ``solvers.SOLVERS``) must hold exactly them; ``tests/test_cli.py`` checks that they do. Keeping
the names here lets ``featcache --help`` and the registries run without importing torch.
"""

from __future__ import annotations

__all__ = [
    "POOLS",
    "PRECISIONS",
    "BACKENDS",
    "DTYPES",
    "COMPRESSIONS",
    "COMPILE",
    "ON_BAD_IMAGE",
    "HEADS",
    "SOLVERS",
    "IN_MEMORY",
    "FIDELITIES",
]

POOLS = ("avg", "avg-nhwc", "cls", "mean-patch")  # how --layer outputs are pooled (featcache.layers)
PRECISIONS = ("fp32", "bf16", "fp16")  # forward-pass precisions; "auto" picks one (featcache.devices)
BACKENDS = ("pil", "device")  # preprocessing backends; "auto" picks one (featcache.loaders)
DTYPES = ("float16", "float32")  # storage dtypes of a store's features
COMPRESSIONS = ("none", "zstd")
COMPILE = ("auto", "on", "off")  # torch.compile of the backbones
ON_BAD_IMAGE = ("error", "skip")
HEADS = ("bn-linear", "linear")  # the probe's head (featcache.heads)
SOLVERS = ("sgd", "lbfgs", "knn")  # the first is the default (featcache.solvers)
IN_MEMORY = ("auto", "yes", "no")  # the probe's memory plan (featcache.feed)
FIDELITIES = ("fast", "strict")  # a sweep's fidelity profile; the first is the default (featcache.fidelity)
