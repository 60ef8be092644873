"""The store contract: layout, completion, resume, refusals, verification, locks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import zarr
from store_factory import make_store, make_v1_store, provenance

from featcache.errors import (
    StoreError,
    StoreIncompleteError,
    StoreLockedError,
    StoreMismatchError,
)
from featcache.store import FORMAT_VERSION, SplitData, StoreLock, StoreWriter, chunk_rows_for, list_stores, open_store


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(50, 8)).astype(np.float32), rng.integers(0, 3, 50)


def test_roundtrip_rows_ids_labels_and_raw_chunks(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)})
    r = open_store(path).split("train")
    assert r.complete and r.rows == 50 and r.n_chunks == 4
    np.testing.assert_array_equal(r.read(), X)
    idx = np.array([49, 0, 17, 17, 33])
    np.testing.assert_array_equal(r.take(idx), X[idx])
    np.testing.assert_array_equal(r.labels, y)
    assert r.ids == [f"train/{i}" for i in range(50)]
    # the contract: an uncompressed chunk file is the raw little-endian block, the last one zero-padded
    raw = np.fromfile(path / "train" / "features" / "c" / "3" / "0", dtype="<f4").reshape(16, 8)
    np.testing.assert_array_equal(raw[:2], X[48:])
    assert not raw[2:].any()
    # and any zarr reader sees the same array
    np.testing.assert_array_equal(zarr.open_array(path / "train" / "features", mode="r")[:], X)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_chunk_of_zeros_is_written_like_any_other(tmp_path, data, compression):
    # zarr leaves out a chunk that is all fill value unless told to write it (every image of a chunk skipped)
    X, y = data
    X, views = X.copy(), [X + 1, X + 2]
    X[16:32] = 0
    views[1][:16] = 0
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)}, views={"train": views}, compression=compression)
    r = open_store(path).split("train")
    assert r.complete and r.n_views == 2 and open_store(path).verify() == []
    np.testing.assert_array_equal(r.read(), X)
    np.testing.assert_array_equal(r.view(1).read(), views[1])
    for f in (r.chunk_file(1), r.view(1).chunk_file(0)):
        assert f.is_file() and (compression != "none" or f.stat().st_size == 16 * 8 * 4)
    zeros = make_store(tmp_path / "zeros.zarr", {"train": (np.zeros_like(X), y)}, compression=compression)
    assert open_store(zeros).verify() == [] and not open_store(zeros).split("train").read().any()


def test_chunk_files_are_where_zarrs_chunk_keys_put_them_and_other_keys_are_named(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)}, views={"train": [X + 1]})
    r = open_store(path).split("train")
    for array, coords in ((r, lambda i: (i, 0)), (r.view(0), lambda i: (0, i, 0))):
        where = r.layout.array_dir("train", array.view_index)
        meta = zarr.open_array(where, mode="r").metadata
        assert meta.chunk_key_encoding.to_dict() == {"name": "default", "configuration": {"separator": "/"}}
        assert [array.chunk_file(i) for i in range(4)] == [where / meta.encode_chunk_key(coords(i)) for i in range(4)]
        assert array.chunk_file(3).is_file()
    doc_path = path / "train" / "features" / "zarr.json"
    doc = json.loads(doc_path.read_text())
    doc["chunk_key_encoding"]["configuration"]["separator"] = "."
    doc_path.write_text(json.dumps(doc))
    assert any("does not name its chunk files c/<i>/0" in p for p in open_store(path).verify())


def test_provenance_and_split_metadata_recorded(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)}, name="run3")
    s = open_store(path)
    assert s.provenance.format_version == FORMAT_VERSION
    assert s.provenance.checkpoint.name == "run3" and s.splits == ["train"]
    meta = s.split("train").meta
    assert meta.complete and meta.completed_at and meta.chunk_rows == 16
    assert len(meta.ids_sha256) == 64 and len(meta.labels_sha256) == 64


def test_incomplete_split_refused_and_resumed(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)}, chunks=2)
    with pytest.raises(StoreIncompleteError, match=r"not complete \(2/4 chunks written\).*rerun"):
        open_store(path).split("train")
    with StoreWriter(path, provenance(dim=8)) as w:
        sw = w.split(SplitData("train", [f"train/{i}" for i in range(50)], y, "fp-train-50", ["0", "1", "2"]), 8,
                     "float32", chunk_rows=16)  # fmt: skip
        assert sw.pending() == [2, 3]
        with pytest.raises(StoreIncompleteError, match=r"misses chunks \[2, 3\]"):
            sw.finalize()
        for i in sw.pending():
            a, b = sw.bounds(i)
            sw.write_chunk(i, X[a:b])
        sw.finalize()
    np.testing.assert_array_equal(open_store(path).split("train").read(), X)


def test_resume_keeps_the_chunk_layout_it_started_with(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)}, chunks=1, chunk_rows=16)
    with StoreWriter(path, provenance(dim=8)) as w:
        sw = w.split(SplitData("train", [f"train/{i}" for i in range(50)], y, "fp-train-50", ["0", "1", "2"]), 8,
                     "float32", chunk_rows=64)  # fmt: skip
        assert sw.chunk_rows == 16 and sw.pending() == [1, 2, 3]


def test_other_identity_refused_with_differing_keys(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)})
    with pytest.raises(StoreMismatchError, match=r"different .*checkpoint\.sha256.*--store-name.*--overwrite"):
        StoreWriter(path, provenance(dim=8, checkpoint={"name": "ckpt", "sha256": "other"}))
    # the refusal released the lock and changed nothing
    assert not (path / "_featcache" / "lock").exists()
    np.testing.assert_array_equal(open_store(path).split("train").read(), X)


def test_other_samples_in_a_split_refused(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)}, chunks=1)
    with StoreWriter(path, provenance(dim=8)) as w:
        with pytest.raises(StoreMismatchError, match="ids_sha256.*--overwrite"):
            w.split(SplitData("train", [f"x/{i}" for i in range(50)], y, "fp-train-50", ["0", "1", "2"]), 8, "float32")


def test_overwrite_starts_over(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)})
    with StoreWriter(path, provenance(dim=8, precision="bf16"), overwrite=True) as w:
        assert w.prov.precision == "bf16"
    assert open_store(path).splits == []


def test_future_format_version_refused(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)})
    g = zarr.open_group(path, mode="r+")
    g.attrs["featcache"] = {**g.attrs["featcache"], "format_version": FORMAT_VERSION + 1}
    with pytest.raises(StoreError, match=rf"format version {FORMAT_VERSION + 1}.*upgrade featcache"):
        open_store(path)
    with pytest.raises(StoreError, match="upgrade featcache"):
        StoreWriter(path, provenance(dim=8))


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="no feature store at .*featcache extract"):
        open_store(tmp_path / "missing.zarr")
    zarr.create_group(tmp_path / "plain.zarr")
    with pytest.raises(StoreError, match="not a featcache store"):
        open_store(tmp_path / "plain.zarr")


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (np.full((16, 8), np.nan, np.float32), "NaN or Inf"),
        (np.full((16, 8), 1e6, np.float32), r"beyond float16.*--dtype float32"),
        (np.zeros((15, 8), np.float32), "shape"),
    ],
)
def test_bad_blocks_refused_before_writing(tmp_path, data, block, match):
    _, y = data
    with StoreWriter(tmp_path / "s.zarr", provenance(dim=8, dtype="float16")) as w:
        sw = w.split(SplitData("train", [str(i) for i in range(50)], y, "fp", ["0", "1", "2"]), 8, "float16",
                     chunk_rows=16)  # fmt: skip
        with pytest.raises(StoreError, match=match):
            sw.write_chunk(0, block)
        assert sw.pending() == [0, 1, 2, 3]


def test_verify_finds_corruption(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)})
    assert open_store(path).verify() == []
    chunk = path / "train" / "features" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[5] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    problems = open_store(path).verify()
    assert any("chunk 1" in p and "checksum" in p for p in problems)
    assert open_store(path).verify(deep=False) == []  # same size: only the deep check sees it
    chunk.write_bytes(bytes(raw[:-4]))
    assert any("has 508 bytes" in p for p in open_store(path).verify(deep=False))


def test_verify_finds_nan_and_label_tampering(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)})
    labels = zarr.open_array(path / "train" / "labels", mode="r+")
    labels[0] = labels[0] + 1
    assert any("labels do not match" in p for p in open_store(path).verify())


def test_chunk_rows_about_16_mib():
    assert chunk_rows_for(2048, "float16") == 4096
    assert chunk_rows_for(512, "float32") == 8192
    assert chunk_rows_for(2**22, "float32") == 1


def test_list_stores(tmp_path, data):
    X, y = data
    make_store(tmp_path / "synthetic" / "a.zarr", {"train": (X, y)}, name="a")
    make_store(tmp_path / "synthetic" / "b.zarr", {"train": (X, y)}, name="b", chunks=1)
    rows = {r.store: r for r in list_stores(tmp_path, "synthetic")}
    assert rows["a"].status == "complete" and rows["a"].dim == 8
    assert rows["a"].splits["train"] == {"rows": 50, "complete": True, "chunks": 4, "written": 4, "views": 0}
    assert rows["b"].status == "incomplete" and rows["b"].splits["train"]["written"] == 1
    assert list_stores(tmp_path, "other") == []


# --- locks ---------------------------------------------------------------------------------------------


def test_second_writer_refused_while_holder_lives(tmp_path, data):
    path = tmp_path / "s.zarr"
    code = (
        "import sys, time\n"
        "from featcache.store import StoreWriter\n"
        "from featcache.testing.stores import provenance\n"
        "w = StoreWriter(sys.argv[1], provenance(dim=8))\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=rf"pid {proc.pid} on host {socket.gethostname()}"):
            StoreWriter(path, provenance(dim=8))
    finally:
        proc.kill()
        proc.wait()
    # the holder is gone (SIGKILL, lock file left behind): the next writer takes over
    assert (path / "_featcache" / "lock").exists()
    with StoreWriter(path, provenance(dim=8)):
        pass
    assert not (path / "_featcache" / "lock").exists()


def _write_lock(path, host, pid, age):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "t", "started": "then"}))
    os.utime(path, (time.time() - age, time.time() - age))


def test_lock_on_another_host_is_respected_until_its_heartbeat_stops(tmp_path):
    lock_file = tmp_path / "lock"
    _write_lock(lock_file, "node-17", 4242, age=5)
    with pytest.raises(StoreLockedError, match="pid 4242 on host node-17"):
        StoreLock(lock_file, "store x", stale_after=120).acquire()
    _write_lock(lock_file, "node-17", 4242, age=600)
    lock = StoreLock(lock_file, "store x", stale_after=120).acquire()
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()


def test_heartbeat_refreshes_the_lock(tmp_path):
    lock_file = tmp_path / "lock"
    with StoreLock(lock_file, "store x", heartbeat=0.05):
        os.utime(lock_file, (0, 0))
        time.sleep(0.3)
        assert time.time() - lock_file.stat().st_mtime < 5


# --- format v1 -----------------------------------------------------------------------------------------


def test_v1_store_is_read_verified_and_not_extended(tmp_path, data):
    X, y = data
    path = make_v1_store(tmp_path / "old.zarr", X, y)
    s = open_store(path)
    assert s.version == 1 and s.provenance.checkpoint.stripped_prefix == "" and s.provenance.pool == ""
    r = s.split("train")
    np.testing.assert_array_equal(r.read(), X)
    np.testing.assert_array_equal(r.take(np.array([49, 0, 17])), X[[49, 0, 17]])
    assert r.n_views == 0 and s.verify() == []
    (path / "_featcache" / "train" / "1.json").unlink()
    assert any("1 of 4 chunks not written" in p for p in s.verify())
    with pytest.raises(StoreError, match=r"format v1, which this featcache reads but does not extend.*--overwrite"):
        StoreWriter(path, provenance(dim=8))
    with StoreWriter(path, provenance(dim=8), overwrite=True) as w:
        assert w.prov.format_version == FORMAT_VERSION


def test_plain_zarr_lists_a_store_without_warnings(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)})
    open_store(path).verify()  # records its verdict in the bookkeeping too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = zarr.open_group(path, mode="r")
        assert "train" in list(g.group_keys())
        tree = str(g.tree())
        feats = g["train/features"]
    assert "features" in tree and feats.metadata.dimension_names == ("row", "feature")
    np.testing.assert_array_equal(feats[:], X)


def _maps_of(path) -> int:
    """Memory maps of this process onto files under ``path``."""
    return sum(str(path) in line for line in open("/proc/self/maps"))  # noqa: SIM115 - read once, closed by GC


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="counts maps in /proc/self/maps")
def test_a_reader_keeps_a_bounded_number_of_chunks_mapped(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(600, 4)).astype(np.float32), rng.integers(0, 3, 600)
    path = make_store(tmp_path / "many.zarr", {"train": (X, y)}, chunk_rows=3)  # 200 chunks of 48 bytes
    r = open_store(path).split("train")
    assert r.n_chunks == 200
    np.testing.assert_array_equal(r.read(), X)
    idx = rng.permutation(600)
    for start in range(0, 600, 50):  # a probe's batches: rows from every chunk, in a shuffled order
        np.testing.assert_array_equal(r.take(idx[start : start + 50]), X[idx[start : start + 50]])
    assert 0 < _maps_of(path) <= 64  # store._reader.MAX_MAPS
    big = make_store(tmp_path / "big.zarr", {"train": (np.repeat(X, 1024, axis=1), y)}, chunk_rows=300)
    assert 2 <= open_store(big).split("train").max_maps < 64  # 4.7 MiB chunks: fewer of them mapped


def test_verify_names_each_problem_once(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)})
    chunk = path / "train" / "features" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-12])
    marker = path / "_featcache" / "train" / "features" / "2" / "zarr.json"
    marker.write_text("{")
    problems = open_store(path).verify()
    assert len(problems) == 2, problems
    assert sum(str(chunk) in p for p in problems) == 1 and sum(str(marker) in p for p in problems) == 1


def test_a_verdict_on_an_incomplete_store_is_incomplete_and_completion_clears_verdicts(tmp_path, data):
    X, y = data
    path = make_store(tmp_path / "s.zarr", {"train": (X, y)}, chunks=2)  # 2 of 4 chunks: being extracted
    assert open_store(path).verify() != []
    assert open_store(path).last_verdict()["status"] == "incomplete"
    (row,) = [s for s in list_stores(tmp_path.parent, tmp_path.name) if s.store == "s"]
    assert row.status == "incomplete" and row.problem is None
    with StoreWriter(path, provenance("ckpt", 8)) as w:  # the extraction goes on and completes
        sw = w.split(SplitData("train", [f"train/{i}" for i in range(50)], y, "fp-train-50", ["0", "1", "2"]), 8,
                     "float32", chunk_rows=16)  # fmt: skip
        for i in sw.pending():
            a, b = sw.bounds(i)
            sw.write_chunk(i, X[a:b])
        sw.finalize()
    assert open_store(path).last_verdict() is None
    (row,) = [s for s in list_stores(tmp_path.parent, tmp_path.name) if s.store == "s"]
    assert row.status == "complete"


def test_rmtree_removes_links_not_what_they_point_to(tmp_path):
    from featcache.store._format import rmtree

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("y")
    (tree / "sub" / "link").symlink_to(outside, target_is_directory=True)
    (tmp_path / "top-link").symlink_to(outside, target_is_directory=True)
    rmtree(tmp_path / "top-link")  # a link to a directory: the link goes, the directory stays
    rmtree(tree)
    assert not tree.exists() and not (tmp_path / "top-link").exists() and (outside / "keep").read_text() == "x"
