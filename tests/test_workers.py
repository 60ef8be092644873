"""DataLoader workers of `featcache extract` die with it, whatever kills it (issue 18.9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ckpt_factory import make_net
from data_factory import write_imagefolder

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has let go of its memory; only its reaper is missing


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_an_extract_kills_its_dataloader_workers(paths, sig):
    write_imagefolder(paths.data / "folder", splits=("train",), per_class=40)
    torch.save(make_net("resnet10").state_dict(), paths.checkpoints / "net.pth")
    cmd = [sys.executable, "-m", "featcache", "--data-dir", str(paths.data), "--cache-dir", str(paths.cache),
           "extract", "--ckpt", str(paths.checkpoints / "net.pth"), "--arch", "resnet10", "--dataset",
           "imagefolder:folder", "--transform", "224px", "--batch-size", "1", "--workers", "2", "--device", "cpu",
           "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = _children(proc.pid)
        assert len(workers) == 2, proc.stderr.read().decode() if proc.poll() is not None else "no workers started"
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=60) == -sig
        deadline = time.monotonic() + 60  # a deadline, not a timing: stranded workers stay for ever
        while any(_running(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [w for w in workers if _running(w)], "DataLoader workers outlived the extract"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in workers:
            if _running(w):
                os.kill(w, signal.SIGKILL)
