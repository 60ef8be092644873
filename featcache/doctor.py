"""What this machine offers for extraction: versions, devices, decoders (``featcache doctor``)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
import zarr

from . import __version__
from .devices import resolve_precision

__all__ = ["machine_report", "pillow_note", "source_checkout"]


def _gpu_jpeg() -> str:
    if not torch.cuda.is_available():
        return "no (no CUDA device)"
    from torchvision.io import decode_jpeg, encode_jpeg

    try:
        img = torch.zeros(3, 8, 8, dtype=torch.uint8)
        decode_jpeg(encode_jpeg(img), device="cuda")
        return "yes (nvJPEG)"
    except RuntimeError as e:
        return f"no ({str(e).splitlines()[0]})"


def source_checkout() -> Path | None:
    """The source checkout featcache runs from (its Makefile has the ``simd`` target), or None when installed."""
    root = Path(__file__).resolve().parent.parent
    try:
        return root if "\nsimd:" in (root / "Makefile").read_text() else None
    except OSError:  # an installed package has no Makefile next to it
        return None


def pillow_note(version: str, checkout: Path | None) -> str:
    """The PIL row: which Pillow runs and, for plain Pillow, how this user installs pillow-simd."""
    if ".post" in version:  # pillow-simd versions end in .postN
        return f"{version} (pillow-simd)"
    if checkout is not None:
        return f"{version} (Pillow; `make simd` in {checkout} installs pillow-simd)"
    return f"{version} (Pillow; for faster decoding: pip uninstall pillow, then pip install pillow-simd)"


def _cpu_bf16() -> str:
    from . import devices

    # The demo pretrains in fp32 on every CPU (its numbers must not depend on the machine), so bf16 is only a fact
    # about this CPU here, not a setting anything uses.
    return ("yes, native" if devices.cpu_bf16_native() else "not native") + " (the demo pretrains in fp32 everywhere)"


def _cuda_bf16(cuda: bool) -> str:
    if not cuda:
        return "- (no CUDA device)"
    if torch.cuda.is_bf16_supported():
        return "yes (extract's auto precision is bf16)"
    return "no (extract's auto precision is fp32)"


def machine_report() -> list[dict]:
    """Rows of ``{"item", "value"}`` describing software and hardware.

    Returns:
        One row per item, in display order.
    """
    cuda = torch.cuda.is_available()
    auto = resolve_precision("auto", torch.device("cuda" if cuda else "cpu"))
    rows = {
        "featcache": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "PIL": pillow_note(PIL.__version__, source_checkout()),
        "cpu cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "cuda device": torch.cuda.get_device_name(0) if cuda else "none",
        "cuda memory": f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB" if cuda else "-",
        "cpu bf16": _cpu_bf16(),
        "cuda bf16": _cuda_bf16(cuda),
        "gpu jpeg decode": _gpu_jpeg(),
        "default extract": f"cuda, {auto}, device preprocessing"
        if cuda
        else f"cpu, {auto}, device preprocessing for arrays, PIL workers for files",
    }
    return [{"item": k, "value": v} for k, v in rows.items()]
