"""Backbones built empty (meta device) and filled with the checkpoint's own tensors: the same network as built and
copied into, faster; the usual build where an empty one could differ."""

from __future__ import annotations

import torch
from conftest import save_checkpoint
from torch import nn

from featcache import models
from featcache.empty_init import build_empty, fill_left_out
from featcache.models import load_backbone


def test_an_empty_built_backbone_equals_the_usual_one(paths, monkeypatch):
    spec, net = save_checkpoint(paths, "net", seed=4, arch="resnet18")
    built = []
    real = models.build_empty
    monkeypatch.setattr(models, "build_empty", lambda *a: built.append(real(*a)) or built[-1])
    fast = load_backbone(spec)
    assert built and built[0] is not None  # the empty path was taken
    monkeypatch.setattr(models, "build_empty", lambda *a: None)
    usual = load_backbone(spec)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast.module(x), usual.module(x), rtol=0, atol=0)
    assert all(not t.is_meta for t in fast.module.state_dict().values())
    assert not any(p.requires_grad for p in fast.module.parameters())


def test_a_half_precision_checkpoint_fills_a_float32_network(paths):
    spec, _ = save_checkpoint(paths, "net", seed=1, arch="resnet18")
    sd = torch.load(spec.path, weights_only=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    torch.save({k: v for k, v in half.items() if not k.endswith("num_batches_tracked")}, spec.path)
    loaded = load_backbone(spec)
    assert {t.dtype for t in loaded.module.parameters()} == {torch.float32}
    tracked = [b for n, b in loaded.module.named_buffers() if n.endswith("num_batches_tracked")]
    assert tracked and all(b.device.type == "cpu" and int(b) == 0 for b in tracked)  # left out: zeros


def test_state_no_checkpoint_holds_means_the_usual_build():
    class Cached(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.register_buffer("table", torch.arange(4.0), persistent=False)  # made here, in no state dict

    class Net:
        def __init__(self):
            self.module = Cached()

    class Reads(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = float(torch.ones(1).sum())  # reads a value: fails on the meta device

    class Holder:
        def __init__(self):
            self.module = Reads()

    assert build_empty(Net) is None and build_empty(Holder) is None
    m = nn.BatchNorm1d(3)
    with torch.device("meta"):
        m.num_batches_tracked = torch.empty((), dtype=torch.long)
    fill_left_out(m)
    assert m.num_batches_tracked.device.type == "cpu" and int(m.num_batches_tracked) == 0
