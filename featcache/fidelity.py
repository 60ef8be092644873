"""Fidelity profiles: how faithfully a store's features follow the research pipeline (no featcache imports).

- ``strict``: the research code's pipeline, as its published numbers were computed: PIL preprocessing per image
  (``--preprocess pil``), an fp32 forward pass, not compiled, features stored in float32. On the CPU, featcache's
  PIL path reproduces the research transforms pixel for pixel (``tests/test_extract.py``). (PyTorch's default lets
  cuDNN run fp32 convolutions in TF32 on recent GPUs, as it did for the research runs.)
- ``fast`` (the default): anything else: on a GPU the batched resize on the device, bf16 and float16 stores.

A sweep's ``fidelity: strict`` sets :data:`STRICT` on its extractions; a store's fidelity is read from its
provenance (:func:`fidelity_of`), shown by ``featcache ls``, recorded with each store a probe used, and shown per
number by ``featcache report``.
"""

from __future__ import annotations

from .choices import FIDELITIES

__all__ = ["FIDELITIES", "STRICT", "fidelity_of"]

# the extraction options (``featcache extract``'s, a sweep's ``extract:`` keys) the strict profile sets
STRICT = {"preprocess": "pil", "precision": "fp32", "dtype": "float32", "compile": "off"}


def fidelity_of(backend: str, precision: str, dtype: str, compiled: bool) -> str:
    """``strict`` when features were made as :data:`STRICT` asks (``backend`` is the resolved ``--preprocess``,
    ``precision`` the resolved one), else ``fast``."""
    made = {"preprocess": backend, "precision": precision, "dtype": dtype, "compile": "on" if compiled else "off"}
    return "strict" if made == STRICT else "fast"
