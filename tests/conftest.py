"""Shared fixtures: a private set of roots per test, the repo's registries, small checkpoints, injected errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ckpt_factory import make_net

from featcache.config import CheckpointSpec, Paths, load_registry

REPO = Path(__file__).resolve().parents[1]


class ArrayRows:
    """A row source, as a store offers one: numpy rows gathered by index; counts its ``take`` calls."""

    def __init__(self, x: np.ndarray):
        self.x, self.calls = x, 0

    def __len__(self) -> int:
        return len(self.x)

    def take(self, indices: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.x[indices]


def refuse_writes_under(monkeypatch: pytest.MonkeyPatch, root: Path, code: int) -> None:
    """Make creating a directory or opening a file for writing anywhere below ``root`` fail with ``code``.

    What a directory without write permission (EACCES) or a read-only filesystem (EROFS) does, injected, so that
    the test means the same when it runs as root, whom permissions do not stop.
    """
    real_mkdir, real_open, root = os.mkdir, os.open, Path(root).resolve()

    def below(path) -> bool:
        return root in Path(os.fsdecode(path)).resolve().parents

    def mkdir(path, *args, **kwargs):
        if below(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and below(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity of two (N, D) arrays."""
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


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


def one_error_line(output: str, *needles: str) -> str:
    """The command's output is exactly one ``Error:`` line holding every needle; returns it."""
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server for a module; the environment points every client (and forked extract processes) at it."""
    try:
        from featcache.testing.s3 import LocalS3

        server = LocalS3().start()
    except Exception as e:  # ImportError without the dev extra, OSError without a loopback port
        pytest.skip(f"moto's S3 server cannot start here ({type(e).__name__}: {e}); pip install -e '.[dev]'")
    from featcache.testing import crash as kr

    with pytest.MonkeyPatch.context() as mp:
        for k, v in server.env.items():
            mp.setenv(k, v)
            mp.setitem(kr.ENV, k, v)  # the fork server's environment
        yield server
    server.stop()


def store_files(root) -> dict[str, bytes]:
    """Every file of a store (a local path or a RemotePath) by relative key, without locks and verify verdicts."""
    from featcache.locations import RemotePath

    if isinstance(root, RemotePath):
        keys = root.find()
    else:
        keys = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    keep = [k for k in keys if not k.startswith(("_featcache/lock", "_featcache/verify"))]
    return {k: (root / k).read_bytes() for k in sorted(keep)}
