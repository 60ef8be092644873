"""featcache.prefetch: items made on a thread at most ``depth`` ahead, errors raised where the item was asked for,
and a close that waits for the item in production and hands back the ones never taken."""

from __future__ import annotations

import threading

import pytest

from featcache.prefetch import Prefetch, prefetch


class _Counted:
    """Items 0..n-1, recording how many were started before each one was taken (the read-ahead)."""

    def __init__(self, n: int, fail_at: int | None = None):
        self.n, self.fail_at, self.started, self.thread = n, fail_at, 0, None
        self.lock = threading.Lock()

    def __iter__(self):
        self.thread = threading.current_thread()
        for i in range(self.n):
            with self.lock:
                self.started += 1
            if i == self.fail_at:
                raise OSError(f"read {i} failed")
            yield i


def _ahead_when_taken(depth: int, n: int = 6) -> list[int]:
    """For each item, how many items had been started when the consumer took it (after the producer settles)."""
    src, seen = _Counted(n), []
    with Prefetch(src, depth) as p:
        for item in p:
            deadline = threading.Event()
            for _ in range(1000):  # let the producer run as far ahead as it may (5 s at most)
                if src.started >= min(n, item + 1 + depth):
                    break
                deadline.wait(0.005)
            deadline.wait(0.02)
            seen.append(src.started - item - 1)
    return seen


@pytest.mark.parametrize("depth", [1, 3])
def test_the_producer_runs_depth_items_ahead_and_no_further(depth):
    # Item i taken: items i + 1 .. i + depth started (the one in production counts), never i + depth + 1.
    ahead = _ahead_when_taken(depth)
    assert ahead == [min(depth, 6 - i - 1) for i in range(6)], ahead


def test_items_come_in_order_from_another_thread():
    src = _Counted(50)
    assert list(prefetch(src, 2)) == list(range(50))
    assert src.thread is not threading.current_thread()
    local = _Counted(5)
    assert list(prefetch(local, 0)) == list(range(5)) and local.thread is threading.current_thread()


def test_an_error_is_raised_by_the_next_that_needed_the_item():
    got = []
    with pytest.raises(OSError, match="read 3 failed"):
        for item in prefetch(_Counted(6, fail_at=3), 1):
            got.append(item)
    assert got == [0, 1, 2]


def test_exception_objects_are_items_too():
    errors = [ValueError("a"), KeyError("b")]
    assert list(prefetch(iter(errors), 1)) == errors


def test_close_waits_for_the_item_in_production_and_discards_the_untaken():
    release, dropped = threading.Event(), []

    def slow():
        yield "a"
        release.wait(5)  # the second item is still being made when the consumer closes
        yield "b"
        yield "c"

    p = Prefetch(slow(), 2, discard=dropped.append)
    assert next(p) == "a"
    threading.Timer(0.05, release.set).start()
    p.close()  # returns only once "b" is made, then drops it: nothing is left behind
    assert dropped == ["b"] and not p._thread.is_alive()
    with pytest.raises(StopIteration):
        next(p)
    p.close()  # idempotent


def test_depth_below_one_is_refused():
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Prefetch([], 0)
