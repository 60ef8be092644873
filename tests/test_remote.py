"""Caches on object storage, against a real S3 API served on 127.0.0.1 (moto's server, started by a fixture).

Every remote store is compared byte for byte with the same extraction on local disk: extraction, a kill and its
resume, verify and repair, a second writer refused, shards, probing streamed and resident, sync both ways, the
remote results log, and one-line errors for a bad URL, missing credentials and a missing bucket.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO, one_error_line, store_files

from featcache.cli import main
from featcache.config import Paths
from featcache.errors import StoreLockedError
from featcache.locations import RemotePath, location
from featcache.results import claim, holder, load_records
from featcache.store import list_stores, open_store
from featcache.store._lease import RemoteLease
from featcache.testing import crash as kr
from featcache.testing.stores import make_store


@pytest.fixture(scope="module")
def launcher(s3):
    server = kr.ForkServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, launcher):
    """60 CIFAR-format images (8 chunks of 8 rows) extracted once on local disk: the reference."""
    s = kr.make_setup(tmp_path_factory.mktemp("remote"), images=60, chunk_rows=8, batch_size=4)
    (s.root / "logs").mkdir()
    assert launcher.start(s.argv("reference"), s.root / "logs" / "reference.log").wait() == 0
    return s


@pytest.fixture(scope="module")
def remote(setup, s3, launcher) -> kr.Setup:
    """The reference extraction again, to S3 (the probe and sync tests read it)."""
    r = _remote(setup, s3, "plain")
    proc = launcher.start(r.argv("reference"), setup.root / "logs" / "plain.log")
    assert proc.wait() == 0, proc.output()
    return r


def _remote(setup, s3, prefix: str) -> kr.Setup:
    return kr.Setup(setup.root, setup.chunk_rows, setup.batch_size, cache_dir=location(s3.url(prefix)))


def _run(*argv, env=None) -> subprocess.CompletedProcess:
    script = [sys.executable, "-c", "from featcache.cli import main; main()"]
    return subprocess.run([*script, *argv], capture_output=True, text=True, env=env or kr.ENV, cwd=REPO, timeout=120)


# --- extract, kill and resume, verify, repair ----------------------------------------------------------------


def test_extract_to_s3_writes_the_local_store_byte_for_byte(setup, s3, remote):
    local, got = setup.path("reference"), remote.path("reference")
    assert isinstance(got, RemotePath) and str(got).startswith("s3://")
    want = store_files(local)
    have = store_files(got)
    # the same files; only the root's created_at and each split's completed_at (times) may differ
    assert sorted(have) == sorted(want)
    chunks = [k for k in want if "/c/" in k]
    assert len(chunks) >= 8 and all(have[k] == want[k] for k in chunks)
    assert kr.compare(local, got) == (0, [])
    ls = CliRunner().invoke(main, ["--cache-dir", s3.url("plain"), "ls", "--format", "json"])
    assert ls.exit_code == 0, ls.output
    assert [(s["store"], s["status"]) for s in json.loads(ls.output)] == [("reference", "complete")]


def test_a_killed_extract_resumes_only_the_missing_chunks_then_verify_and_repair_work(setup, s3, launcher):
    remote, logs = _remote(setup, s3, "killed"), setup.root / "logs"
    path = remote.path("reference")
    # killed as it starts the 4th chunk: three chunks written and marked, the rest not
    killed = launcher.start(remote.argv("reference"), logs / "k1.log",
                            kill_at=("featcache.store:SplitWriter.write_chunk", 4))  # fmt: skip
    assert killed.wait() == -signal.SIGKILL, killed.output()
    store = open_store(path)
    train = store.split(store.splits[0], require_complete=False)
    marked = sorted(train.markers())
    assert marked == [0, 1, 2] and train.n_chunks > 3, marked
    # spoil a chunk already marked written: the resume must keep it (it redoes the missing chunks only) ...
    spoiled = train.chunk_file(marked[0])
    spoiled.write_bytes(bytes(len(spoiled.read_bytes())))
    resume = launcher.start(remote.argv("reference"), logs / "k2.log")
    assert resume.wait() == 0, resume.output()
    assert spoiled.read_bytes() == bytes(len(spoiled.read_bytes()))
    # ... verify finds exactly that chunk, the store is refused ...
    v = CliRunner().invoke(main, ["verify", str(path)])
    assert v.exit_code == 1 and f"chunk {marked[0]} (" in v.output and "does not match its checksum" in v.output
    assert v.output.count("does not match") == 1, v.output
    # ... and --repair writes it again: the store is then the uninterrupted one, byte for byte
    repair = launcher.start([*remote.argv("reference"), "--repair"], logs / "k3.log")
    assert repair.wait() == 0, repair.output()
    assert kr.compare(setup.path("reference"), path) == (0, [])
    assert CliRunner().invoke(main, ["verify", str(path)]).exit_code == 0


def test_rows_read_from_s3_in_any_order_with_repeats_are_the_local_rows(tmp_path, s3):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 6)).astype(np.float32), np.arange(200) % 3
    views = {"train": [X + 1, X + 2]}
    local = make_store(tmp_path / "s.zarr", {"train": (X, y)}, chunk_rows=16, views=views)
    remote = make_store(location(s3.url("rows", "s.zarr")), {"train": (X, y)}, chunk_rows=16, views=views)
    a, b = open_store(local).split("train"), open_store(remote).split("train")
    assert b.parallel_reads and not a.parallel_reads
    for idx in (rng.integers(0, 200, 300), np.arange(199, -1, -1), np.array([5, 3, 3, 180, 17, 16, 15])):
        np.testing.assert_array_equal(b.take(idx), a.take(idx))
        np.testing.assert_array_equal(b.view(1).take(idx), X[idx] + 2)
    assert b.labels.tolist() == y.tolist() and b.ids == a.ids


def test_a_remote_take_holds_at_most_its_output_in_flight(tmp_path, s3, monkeypatch):
    from featcache.store import _remote_read

    X, y = np.arange(400 * 8, dtype=np.float32).reshape(400, 8), np.arange(400) % 2
    remote = open_store(make_store(location(s3.url("window", "s.zarr")), {"train": (X, y)}, chunk_rows=32))
    monkeypatch.setattr(_remote_read, "PART_BYTES", 16 * 32)  # 16 rows a part: two parts a chunk
    fetched, real = [], _remote_read.RemoteReads._fetch

    def counting(self, batch, out, row_bytes):
        fetched.append(sum((b - a) * row_bytes for _, a, b, *_ in batch))
        return real(self, batch, out, row_bytes)

    monkeypatch.setattr(_remote_read.RemoteReads, "_fetch", counting)
    train = remote.split("train")
    rows = np.arange(0, 400, 2)  # every other row: one range a chunk (gaps merged), cut in two parts
    out = train.take(rows)
    np.testing.assert_array_equal(out, X[rows])
    assert max(fetched) <= out.nbytes and len(fetched) > 1  # fetched in windows no larger than the output


# --- two writers, shards ---------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_and_a_dead_writers_lease_is_taken_over(setup, s3, launcher):
    remote, logs = _remote(setup, s3, "contended"), setup.root / "logs"
    first = launcher.start(remote.argv("reference"), logs / "w1.log",
                           sleep_at=("featcache.store:SplitWriter.write_chunk", 60))  # fmt: skip
    lease = remote.path("reference") / "_featcache" / "lock"
    deadline = time.monotonic() + 60
    while not lease.exists():
        assert first.poll() is None and time.monotonic() < deadline, first.output()
        time.sleep(0.05)
    second = launcher.start(remote.argv("reference"), logs / "w2.log")
    assert second.wait() == 1
    one_error_line(second.output(), f"pid {first.pid} on host {socket.gethostname()}", "is being written")
    first.kill()
    first.wait()
    third = launcher.start(remote.argv("reference"), logs / "w3.log")
    assert third.wait() == 0, third.output()
    assert "taking over" in third.output()
    assert kr.compare(setup.path("reference"), remote.path("reference")) == (0, [])


def test_a_lease_on_another_host_holds_until_its_heartbeat_stops(s3):
    path = location(s3.url("leases", "lock"))
    path.write_bytes(json.dumps({"host": "node-17", "pid": 4242, "token": "t", "started": "then"}).encode())
    with pytest.raises(StoreLockedError, match="pid 4242 on host node-17"):
        RemoteLease(path, "store x", stale_after=120).acquire()
    time.sleep(1.2)  # S3 times have one-second resolution
    lease = RemoteLease(path, "store x", stale_after=1).acquire()
    assert json.loads(path.read_bytes())["token"] == lease.token
    with pytest.raises(StoreLockedError, match=f"on host {socket.gethostname()}"):
        RemoteLease(path, "store x").acquire()  # a live holder on this host: refused whatever its age
    lease.release()
    assert not path.exists()


def test_shards_write_their_own_chunks_and_the_last_completes_the_store(setup, s3, launcher):
    remote, logs = _remote(setup, s3, "sharded"), setup.root / "logs"
    shards = [launcher.start([*remote.argv("reference"), "--shard", f"{i}/2"], logs / f"shard{i}.log") for i in (0, 1)]
    assert [p.wait() for p in shards] == [0, 0], [p.output() for p in shards]
    assert kr.compare(setup.path("reference"), remote.path("reference")) == (0, [])


# --- probing, sync, results ---------------------------------------------------------------------------------


def _probe(store, log, *extra) -> dict:
    argv = ["--results", str(log), "probe", "--stores", str(store), "--epochs", "3", "--device", "cpu", *extra]
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in open(log)] if not str(log).startswith("s3://") else None
    return records[-1] if records else {}


def _numbers(record: dict) -> tuple:
    return (record["memory"], record["selected"], [h["val_top1"] for h in record["heads"]], record["rows"])


def test_a_probe_streamed_from_s3_equals_the_local_probe(setup, remote, tmp_path):
    local, got = setup.path("reference"), remote.path("reference")
    for mode in (["--in-memory", "no", "--max-memory", "20K"], ["--in-memory", "yes"]):  # streamed, resident
        want = _probe(local, tmp_path / "local.jsonl", *mode)
        have = _probe(got, tmp_path / "remote.jsonl", *mode)
        assert _numbers(have) == _numbers(want)
        assert have["memory"] == ("streamed" if mode[1] == "no" else "resident")
        assert have["stores"][0]["path"] == str(got)


def test_sync_copies_complete_stores_both_ways_verified(s3, remote, tmp_path):
    laptop = tmp_path / "laptop"
    pull = CliRunner().invoke(main, ["sync", s3.url("plain"), str(laptop), "--stores", "ref*"])
    assert pull.exit_code == 0, pull.output
    assert "copied" in pull.output
    pulled = laptop / "cifar10" / "reference.zarr"
    assert store_files(pulled) == store_files(remote.path("reference"))
    assert open_store(pulled).verify() == []
    again = CliRunner().invoke(main, ["sync", s3.url("plain"), str(laptop)])
    assert again.exit_code == 0 and "up to date" in again.output, again.output
    push = CliRunner().invoke(main, ["sync", str(laptop), s3.url("pushed")])
    assert push.exit_code == 0, push.output
    assert store_files(location(s3.url("pushed", "cifar10", "reference.zarr"))) == store_files(pulled)
    # a source chunk that does not match its checksum is never copied
    spoiled = open_store(pulled).split("test").chunk_file(0)
    spoiled.write_bytes(bytes(len(spoiled.read_bytes())))
    bad = CliRunner().invoke(main, ["sync", str(laptop), s3.url("spoiled")])
    assert bad.exit_code == 1
    one_error_line(bad.output, "chunk 0 of", "does not match its checksum", "featcache verify")


def test_an_interrupted_sync_leaves_a_store_readers_refuse_and_a_rerun_finishes(tmp_path, monkeypatch):
    from featcache.store import _sync

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(100, 4)).astype(np.float32), np.arange(100) % 2
    src = make_store(tmp_path / "a" / "ds" / "s.zarr", {"train": (X, y), "test": (X, y)}, name="s")
    real, calls = _sync._copy_chunk, []

    def dying(*args):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(_sync, "_copy_chunk", dying)
    r = CliRunner().invoke(main, ["sync", str(tmp_path / "a"), str(tmp_path / "b")])
    assert r.exit_code == 1
    one_error_line(r.output, "No space left on device", "free space and rerun")
    dst = tmp_path / "b" / "ds" / "s.zarr"
    assert open_store(dst).splits == []  # nothing to read until the copy is whole
    assert [s.status for s in list_stores(tmp_path / "b")] == ["incomplete"]
    monkeypatch.setattr(_sync, "_copy_chunk", real)
    again = CliRunner().invoke(main, ["sync", str(tmp_path / "a"), str(tmp_path / "b")])
    assert again.exit_code == 0 and "copied" in again.output, again.output
    assert store_files(dst) == store_files(src) and open_store(dst).verify() == []


def test_a_remote_results_log_is_one_object_per_record_read_oldest_first(setup, s3, tmp_path):
    log = s3.url("results")
    store = setup.path("reference")
    for seed in (1, 2):
        _probe(store, log, "--seed", str(seed), "--tag", f"run{seed}")
    prefix = location(log)
    assert len([k for k in prefix.find() if k.endswith(".json")]) == 2
    assert [r.tag for r in load_records(log)] == ["run1", "run2"]  # read oldest first, as lines of a local log
    r = CliRunner().invoke(main, ["--results", log, "results", "--format", "json"])
    assert r.exit_code == 0, r.output
    assert sorted(rec["tag"] for rec in json.loads(r.output)) == ["run1", "run2"]


def test_sweep_claims_on_a_remote_log_are_leases(s3):
    log = s3.url("claimed")
    with claim(log, "probe-key", wait=False) as mine:
        assert mine
        with claim(log, "probe-key", wait=False) as other:
            assert not other  # held by a live process: a second sweep skips the probe
        assert f"on host {socket.gethostname()}" in holder(log, "probe-key")
    with claim(log, "probe-key", wait=False) as again:
        assert again  # released


def test_a_remote_caches_results_log_stays_local_unless_results_names_one(s3):
    paths = Paths.from_env(cache=s3.url("cache"), data="d", checkpoints="c")
    assert isinstance(paths.cache, RemotePath) and str(paths.results_log) == "cache/results.jsonl"
    assert str(Paths.from_env(cache=s3.url("cache"), results=s3.url("r"), data="d").results_log) == s3.url("r")


# --- one-line errors ---------------------------------------------------------------------------------------------


def test_a_bad_url_missing_credentials_and_a_missing_bucket_are_one_line_errors(s3):
    for argv, needle in (
        (["--cache-dir", "s4://bucket/cache", "ls"], "unknown storage protocol 's4://'"),
        (["--cache-dir", "s3://", "ls"], "names no bucket"),
        (["ls", "--cache-dir", "s3://no-such-bucket/cache"], "bucket 'no-such-bucket' does not exist"),
        (["probe", "--stores", "s3://no-such-bucket/cache/d/x.zarr"], "bucket 'no-such-bucket' does not exist"),
    ):
        r = CliRunner().invoke(main, argv)
        assert r.exit_code == 1, (argv, r.output)
        one_error_line(r.output, needle)
    # credentials are read once per process: a fresh one without any
    bare = {k: v for k, v in kr.ENV.items() if not k.startswith("AWS_") or k == "AWS_ENDPOINT_URL_S3"}
    bare.update(AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent",
                AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    r = _run("--cache-dir", s3.url("cache"), "ls", env=bare)
    assert r.returncode == 1
    line = one_error_line(r.stderr, "no credentials found for s3://", "AWS_PROFILE")
    assert "testing" not in line  # credentials are never echoed
