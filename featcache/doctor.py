"""What this machine offers for extraction: versions, devices, decoders (``featcache doctor``)."""

from __future__ import annotations

import os
import platform

import numpy as np
import PIL
import torch
import torchvision
import zarr

from . import __version__

__all__ = ["machine_report"]


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


def machine_report() -> list[dict]:
    """Rows of ``{"item", "value"}`` describing software and hardware."""
    cuda = torch.cuda.is_available()
    simd = ".post" in PIL.__version__  # pillow-simd versions end in .postN
    rows = {
        "featcache": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "PIL": f"{PIL.__version__} ({'pillow-simd' if simd else 'Pillow; `make simd` installs pillow-simd'})",
        "cpu cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "cuda device": torch.cuda.get_device_name(0) if cuda else "none",
        "cuda memory": f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB" if cuda else "-",
        "bf16 support": str(cuda and torch.cuda.is_bf16_supported()),
        "gpu jpeg decode": _gpu_jpeg(),
        "default extract": "cuda, bf16, device preprocessing"
        if cuda
        else "cpu, fp32, device preprocessing for arrays, PIL workers for files",
    }
    return [{"item": k, "value": v} for k, v in rows.items()]
