"""`featcache doctor` reports what the code does: CPU bf16 (the demo pretrains in fp32 anyway), extract's precision,
how to get pillow-simd."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO

import featcache.devices
import featcache.doctor
from featcache.doctor import machine_report, pillow_note, source_checkout


def _rows() -> dict[str, str]:
    return {r["item"]: r["value"] for r in machine_report()}


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_is_reported_and_the_demo_pretrains_in_fp32_either_way(monkeypatch, native):
    monkeypatch.setattr(featcache.devices, "cpu_bf16_native", lambda: native)
    row = _rows()["cpu bf16"]
    assert row.startswith("yes, native") if native else row.startswith("not native"), row
    assert "the demo pretrains in fp32 everywhere" in row and "bf16)" not in row


def test_cuda_bf16_and_default_extract_follow_the_auto_precision(monkeypatch):
    rows = _rows()
    if not torch.cuda.is_available():
        assert rows["cuda bf16"] == "- (no CUDA device)" and rows["default extract"].startswith("cpu, fp32,")
        return
    auto = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert f"auto precision is {auto}" in rows["cuda bf16"] and rows["default extract"].startswith(f"cuda, {auto},")


def test_pillow_simd_advice_fits_how_featcache_was_installed(monkeypatch, tmp_path):
    assert source_checkout() == REPO  # the tests run on the editable install of this checkout
    assert "`make simd` in" in pillow_note("11.0.0", REPO)
    pip = pillow_note("11.0.0", None)
    assert "make" not in pip and "pip uninstall pillow, then pip install pillow-simd" in pip
    assert pillow_note("9.5.0.post1", None) == "9.5.0.post1 (pillow-simd)"
    monkeypatch.setattr(featcache.doctor, "source_checkout", lambda: None)
    assert "make simd" not in _rows()["PIL"]
