"""Shared fixtures: a private set of roots per test, the repo's registries, small checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ckpt_factory import make_net

from featcache.config import CheckpointSpec, Paths, load_registry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # Test tensors are tiny: one intra-op thread is faster and steadier on a shared 2-core machine.
    torch.set_num_threads(1)


@pytest.fixture
def paths(tmp_path) -> Paths:
    p = Paths(data=tmp_path / "data", cache=tmp_path / "cache", checkpoints=tmp_path / "ckpts", config=REPO / "configs")
    for d in (p.data, p.cache, p.checkpoints):
        d.mkdir()
    return p


@pytest.fixture
def registry(paths):
    return load_registry(paths)


def save_checkpoint(
    paths: Paths, name: str, seed: int, arch: str = "resnet10"
) -> tuple[CheckpointSpec, torch.nn.Module]:
    """A random torchvision network saved as a plain state_dict; returns its spec and the network."""
    net = make_net(arch, seed=seed)
    path = paths.checkpoints / f"{name}.pth"
    torch.save(net.state_dict(), path)
    return CheckpointSpec(name, arch, path), net


@pytest.fixture
def ckpt(paths):
    return save_checkpoint(paths, "net0", seed=0)
