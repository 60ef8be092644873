"""featcache.chunk_writer: chunks of several stores written side by side, each store's in order, errors raised."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from featcache.chunk_writer import ChunkWriter


class FakeArray:
    """An array writer of one store: records what it was asked to write, where, in which thread."""

    def __init__(self, store: object, log: list, barrier: threading.Barrier | None = None, fail_at: int = -1):
        self.store, self.log, self.barrier, self.fail_at = store, log, barrier, fail_at

    def bounds(self, i: int) -> tuple[int, int]:
        return 4 * i, 4 * i + 4

    def write_chunk(self, i: int, block: np.ndarray, skipped) -> None:
        if self.barrier is not None:
            self.barrier.wait(timeout=20)  # returns only when the other store's write runs at the same time
        if i == self.fail_at:
            raise OSError("disk full (simulated)")
        self.log.append((self.store, i, threading.get_ident(), block.copy(), list(skipped)))


def _chunk(v: float) -> torch.Tensor:
    return torch.full((4, 2), v)


def test_stores_are_written_side_by_side_and_each_in_order():
    log, barrier = [], threading.Barrier(2)
    a, b = FakeArray("A", log, barrier), FakeArray("B", log, barrier)
    writer = ChunkWriter(threads=2)
    for i in range(3):
        writer.submit(a, i, _chunk(i), [])
        writer.submit(b, i, _chunk(10 + i), [4 * i + 1] if i == 2 else [])
    writer.close()
    for store in "AB":
        mine = [entry for entry in log if entry[0] == store]
        assert [i for _, i, _, _, _ in mine] == [0, 1, 2]  # in order
        assert len({t for _, _, t, _, _ in mine}) == 1  # on one thread
    threads = {store: {e[2] for e in log if e[0] == store} for store in "AB"}
    assert threads["A"] != threads["B"]
    last_b = next(e for e in log if e[:2] == ("B", 2))
    assert last_b[4] == [9] and not last_b[3][1].any() and last_b[3][0].all()  # row 9 of chunk 2 (rows 8-11) zeroed
    assert writer.busy_s > 0


def test_more_stores_than_threads_share_them():
    log = []
    arrays = [FakeArray(f"S{k}", log) for k in range(5)]
    writer = ChunkWriter(threads=2)
    for array in arrays:
        writer.submit(array, 0, _chunk(1), [])
    writer.close()
    assert sorted(e[0] for e in log) == [f"S{k}" for k in range(5)] and len({e[2] for e in log}) == 2


def test_a_failed_write_is_raised_and_stop_does_not_raise():
    log = []
    writer = ChunkWriter(threads=2)
    writer.submit(FakeArray("A", log, fail_at=1), 1, _chunk(1), [])
    with pytest.raises(OSError, match="simulated"):
        writer.close()
    writer.stop()  # again, after close: nothing left, nothing raised
    other = ChunkWriter(threads=1)
    other.submit(FakeArray("B", log, fail_at=0), 0, _chunk(1), [])
    other.stop()  # a failed split's cleanup: the queued chunk is attempted, the error kept for check()
    with pytest.raises(OSError):
        other.check()
