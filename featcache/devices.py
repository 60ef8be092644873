"""Device and precision choice, shared by both phases (no model or data code here)."""

from __future__ import annotations

import logging
import os
import platform
import threading
from pathlib import Path

import torch

from .errors import ConfigError

__all__ = ["resolve_device", "resolve_precision", "device_name", "cpu_bf16_native", "start_device", "PRECISIONS"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when visible, else CPU; refuse ``cuda`` on a machine without one.

    Raises:
        ConfigError: unknown device string, or CUDA asked for and absent.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is visible; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu or cuda[:N]") from None


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs that support it, else fp32."""
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model and core count (for benchmark and doctor headers)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model} ({os.cpu_count()} cores)"


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast would pay off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def start_device(device: torch.device, precision: str) -> threading.Thread | None:
    """Start a CUDA device in the background: its context, cuBLAS and cuDNN (their libraries load on first use).

    Each takes a good part of a second on a first call; started on a thread at the beginning of an extraction,
    they overlap with listing the dataset and reading the checkpoints instead of delaying the first batch. The
    caller joins the thread before it moves a model to the device. None (nothing to start) off CUDA.
    """
    if device.type != "cuda":
        return None

    def start() -> None:
        try:
            torch.cuda.set_device(device)
            dtype = PRECISIONS.get(precision, torch.float32)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                x = torch.ones(2, 3, 8, 8, device=device).contiguous(memory_format=torch.channels_last)
                w = torch.ones(4, 3, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
                torch.nn.functional.conv2d(x, w)  # cuDNN
                torch.ones(8, 8, device=device) @ torch.ones(8, 8, device=device)  # cuBLAS
            torch.cuda.synchronize(device)
        except Exception as e:  # noqa: BLE001 - the extraction meets the same fault where it can report it
            log.debug("starting %s in the background failed: %s", device, e)

    thread = threading.Thread(target=start, name="featcache-device-start", daemon=True)
    thread.start()
    return thread
