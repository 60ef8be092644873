"""Extraction by several processes: --shard I/N tasks and torchrun ranks write disjoint whole chunks of the same
stores, and the result is byte for byte the store one process writes (CPU, fp32)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, save_checkpoint
from data_factory import write_cifar10

from featcache.distributed import from_env
from featcache.errors import ConfigError, StoreLockedError
from featcache.extract import ExtractConfig, extract
from featcache.store import open_store, store_path


@pytest.fixture
def setup(paths, registry):
    write_cifar10(paths.data / "cifar", n_train_per_batch=6, n_test=9)  # 30 train, 9 test
    specs = [save_checkpoint(paths, f"net{k}", seed=k)[0] for k in range(2)]
    ds = registry.dataset("cifar10")
    cfg = ExtractConfig(tuple(specs), ds, registry.transform(ds, "32px"), paths.cache, dtype="float32", batch_size=4,
                        workers=0, device="cpu", chunk_rows=4, views=2)  # fmt: skip
    extract(dataclasses.replace(cfg, cache_dir=paths.cache / "reference"))
    return cfg


def _same_bytes(a, b) -> None:
    """Every feature and view chunk file, and every split's ids, labels and completion, equal."""
    for name in ("net0", "net1"):
        sa, sb = (open_store(store_path(root, "cifar10", name)) for root in (a, b))
        assert sa.splits == sb.splits
        for split in sa.splits:
            ra, rb = sa.split(split), sb.split(split)
            assert ra.complete and rb.complete and ra.n_views == rb.n_views
            for fa, fb in zip(ra.arrays(), rb.arrays(), strict=True):
                for i in range(fa.n_chunks):
                    assert fa.chunk_file(i).read_bytes() == fb.chunk_file(i).read_bytes(), (name, split, fa.label, i)
            assert ra.ids == rb.ids and ra.labels.tolist() == rb.labels.tolist()


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_shards_in_either_order_complete_the_store(paths, setup, order):
    first = extract(dataclasses.replace(setup, shard=(order[0], 2)))
    assert all("done; the others are missing" in s["status"] for s in first.stores)
    assert not open_store(store_path(paths.cache, "cifar10", "net0")).split("train", require_complete=False).complete
    extract(dataclasses.replace(setup, shard=(order[1], 2)))
    _same_bytes(paths.cache / "reference", paths.cache)


def test_a_plain_rerun_fills_what_a_missing_shard_left(paths, setup):
    extract(dataclasses.replace(setup, shard=(2, 3)))
    report = extract(setup)  # no --shard: the missing chunks of shards 0 and 1
    assert all(s["status"] == "resumed" for s in report.stores)
    _same_bytes(paths.cache / "reference", paths.cache)


def test_a_killed_shard_reruns_only_its_missing_chunks(paths, setup, monkeypatch):
    from featcache.store import _writer

    real, written = _writer.ArrayWriter.write_chunk, []

    def dies(self, i, *a, **kw):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(i)
        return real(self, i, *a, **kw)

    monkeypatch.setattr(_writer.ArrayWriter, "write_chunk", dies)
    with pytest.raises(KeyboardInterrupt):
        extract(dataclasses.replace(setup, shard=(0, 2)))
    monkeypatch.undo()
    assert all(i % 2 == 0 for i in written)  # shard 0 of 2 writes even chunks only
    extract(dataclasses.replace(setup, shard=(1, 2)))
    extract(dataclasses.replace(setup, shard=(0, 2)))  # the rerun of the killed task
    _same_bytes(paths.cache / "reference", paths.cache)


def test_a_live_shard_blocks_a_plain_writer_and_its_twin(paths, setup):
    store = store_path(paths.cache, "cifar10", "net0")
    extract(dataclasses.replace(setup, shard=(0, 2), splits=("train",)))
    lock = store / "_featcache" / "lock-shard-1-of-2"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": "t", "started": "now"}))
    with pytest.raises(StoreLockedError, match=r"being written by shard-1-of-2 .*wait for the shards to finish"):
        extract(setup)
    with pytest.raises(StoreLockedError, match=r"shard 1/2 of store .* is being written by pid"):
        extract(dataclasses.replace(setup, shard=(1, 2)))
    lock.unlink()
    with pytest.raises(ConfigError, match="--shard cannot be combined with --overwrite"):
        extract(dataclasses.replace(setup, shard=(0, 2), overwrite=True))
    with pytest.raises(ConfigError, match="0 <= I < N"):
        extract(dataclasses.replace(setup, shard=(2, 2)))


def test_the_launchers_variables_name_the_rank():
    assert from_env({}) is None and from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    w = from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.local_rank, w.shard) == (3, 4, 1, (3, 4))
    s = from_env({"SLURM_PROCID": "2", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0", "MASTER_ADDR": "node1"})
    assert s.shard == (2, 8)
    assert from_env({"SLURM_PROCID": "2", "SLURM_NTASKS": "8"}) is None  # srun without a master: not a group


def test_two_torchrun_ranks_on_gloo_write_the_one_process_store(paths, setup):
    ckpts = ",".join(str(c.path) for c in setup.checkpoints)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "featcache",
           "--data-dir", str(paths.data), "--cache-dir", str(paths.cache), "extract", "--ckpt", ckpts, "--arch",
           "resnet10", "--dataset", "cifar10", "--transform", "32px", "--dtype", "float32", "--batch-size", "4",
           "--workers", "0", "--device", "cpu", "--chunk-rows", "4", "--views", "2", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("net0.zarr") == 1  # only rank 0 prints the table
    assert "39 images + 60 augmented views x 2 store(s)" in r.stdout  # the group's work, not rank 0's share
    _same_bytes(paths.cache / "reference", paths.cache)
    assert not list((store_path(paths.cache, "cifar10", "net0") / "_featcache").glob("lock*"))
    got, want = (open_store(store_path(root, "cifar10", "net1")).split("test").read()
                 for root in (paths.cache, paths.cache / "reference"))  # fmt: skip
    np.testing.assert_array_equal(got, want)


def test_a_shard_opening_the_store_keeps_a_live_peers_temp_files(paths, setup):
    # the torchrun race (issue 24): rank 1 opening a store while rank 0 writes a chunk removed rank 0's temp file
    from featcache.store import StoreWriter

    store = store_path(paths.cache, "cifar10", "net0")
    extract(dataclasses.replace(setup, shard=(0, 2), splits=("train",)))
    prov = open_store(store).provenance
    lock = store / "_featcache" / "lock-shard-0-of-2"  # shard 0, alive (this process), mid-write of chunk 1
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": "t", "started": "now"}))
    partial = store / "train" / "features" / "c" / "1" / "0.4f2a.partial"
    tmp = store / "_featcache" / "train" / "features" / "1" / f".zarr.json.{os.getpid()}.tmp"
    for f in (partial, tmp):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"being written")
    StoreWriter(store, prov, shard=(1, 2)).close()
    assert partial.exists() and tmp.exists()
    with pytest.raises(StoreLockedError, match="being written by shard-0-of-2"):
        StoreWriter(store, prov)  # a plain writer is refused, and touches nothing first
    assert partial.exists() and tmp.exists()
    lock.unlink()
    StoreWriter(store, prov, shard=(1, 2)).close()  # no live peer: the leftovers are a killed writer's
    assert not partial.exists() and not tmp.exists()
