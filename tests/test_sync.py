"""``featcache sync`` against hostile caches: a destination that already holds another extraction of the store, a
damaged source, a destination or source that is a store rather than a cache. Local caches: the copy's logic is the
same for object storage (tests/test_remote.py syncs to and from S3)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_error_line, store_files

from featcache.cli import main
from featcache.store import list_stores, open_store
from featcache.testing.stores import make_store

RNG = np.random.default_rng(7)
X_SRC = RNG.normal(size=(60, 4)).astype(np.float32)
X_OLD = RNG.normal(size=(60, 4)).astype(np.float32)
Y = np.arange(60) % 3


def _run_sync(*argv: str):
    return CliRunner().invoke(main, ["sync", *map(str, argv)])


@pytest.fixture
def src(tmp_path):
    return make_store(tmp_path / "a" / "ds" / "s.zarr", {"train": (X_SRC, Y), "test": (X_SRC[:20], Y[:20])},
                      name="s", chunk_rows=8)  # fmt: skip


def test_an_interrupted_sync_over_another_extraction_leaves_it_incomplete_and_a_rerun_makes_the_copy(
    tmp_path, src, monkeypatch
):
    from featcache.store import _sync

    # the destination already holds a complete store of the same identity, extracted otherwise (other chunking,
    # other bytes): sync replaces it, and until it is whole the store must not be listed complete
    dst = make_store(tmp_path / "b" / "ds" / "s.zarr", {"train": (X_OLD, Y), "test": (X_OLD[:20], Y[:20])},
                     name="s", chunk_rows=4)  # fmt: skip
    real, calls = _sync._copy_chunk, []

    def dying(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(_sync, "_copy_chunk", dying)
    r = _run_sync(tmp_path / "a", tmp_path / "b")
    assert r.exit_code == 1, r.output
    assert open_store(dst).splits == []  # no split of a half-replaced store to read
    assert [s.status for s in list_stores(tmp_path / "b")] == ["incomplete"]
    monkeypatch.setattr(_sync, "_copy_chunk", real)
    again = _run_sync(tmp_path / "a", tmp_path / "b")
    assert again.exit_code == 0 and "copied" in again.output, again.output
    # the copy is the source, file for file: no chunk or marker of the old chunking is left behind
    assert store_files(dst) == store_files(src) and open_store(dst).verify() == []
    np.testing.assert_array_equal(open_store(dst).split("train").read(), X_SRC)


@pytest.mark.parametrize(
    "damage, needle",
    [
        ("truncate", "has 100 bytes, want 128"),
        ("delete chunk", "is missing"),
        ("delete marker", "has no marker"),
        ("zero", "does not match its checksum"),
    ],
)
def test_a_damaged_source_chunk_is_one_line_naming_it_and_verify(tmp_path, src, damage, needle):
    train = open_store(src).split("train")
    chunk, marker = train.chunk_file(2), train.marker(2)
    if damage == "truncate":
        chunk.write_bytes(chunk.read_bytes()[:100])
    elif damage == "delete chunk":
        chunk.unlink()
    elif damage == "delete marker":
        marker.unlink()
    else:
        chunk.write_bytes(bytes(len(chunk.read_bytes())))
    r = _run_sync(tmp_path / "a", tmp_path / "b")
    assert r.exit_code == 1
    one_error_line(r.output, f"chunk 2 of {chunk}", needle, f"featcache verify {src}")
    assert [s.status for s in list_stores(tmp_path / "b")] == ["incomplete"]


def test_a_store_given_as_src_or_dst_is_refused_naming_the_cache(tmp_path, src):
    r = _run_sync(src, tmp_path / "b")
    assert r.exit_code == 1
    one_error_line(r.output, f"SRC {src} is a store", f"featcache sync {tmp_path / 'a'} DST --dataset ds --stores s")
    other = make_store(tmp_path / "b" / "ds" / "t.zarr", {"train": (X_OLD, Y)}, name="t")
    for dst in (other, other / "sub"):
        r = _run_sync(tmp_path / "a", dst)
        assert r.exit_code == 1
        one_error_line(r.output, f"DST {dst} is a store", f"(such as {tmp_path / 'b'})")
    assert [p.name for p in other.iterdir()] and not (other / "ds").exists()  # nothing written inside it


def test_a_destination_being_written_by_a_live_shard_is_refused_untouched(tmp_path, src):
    from featcache.store._format import Layout
    from featcache.store._lock import StoreLock

    dst = make_store(tmp_path / "b" / "ds" / "s.zarr", {"train": (X_OLD, Y), "test": (X_OLD[:20], Y[:20])},
                     name="s", chunk_rows=4)  # fmt: skip
    before = store_files(dst)
    with StoreLock(Layout(dst).shard_lock(0, 2), "shard 0/2"):  # shards hold their own lock only
        r = _run_sync(tmp_path / "a", tmp_path / "b")
    assert r.exit_code == 1
    one_error_line(r.output, f"store {dst} is being written by shard-0-of-2", "wait for the shards")
    assert {k: v for k, v in store_files(dst).items() if "lock-shard" not in k} == before
