"""One training step run eagerly, or captured once in a CUDA graph and replayed (:class:`StepGraph`).

At the research protocol's batch of 32 a step's arithmetic takes microseconds on a GPU, but launching its few dozen
kernels one by one from Python takes about 2 ms: the step is bound by the launches, not by the GPU. A CUDA graph
records the kernels of one step once; each later step is one ``replay()``. That is only sound for a step that
reads and writes tensors allocated once (their addresses are baked into the graph), takes no Python number that
changes between steps (the learning rate is a tensor, the batch's rows come from a device counter), and never
waits for the device: :class:`featcache.heads_step.HeadTrainer` is written that way, and the same function runs
eagerly on the CPU, where its equivalence with the graph's protocol is tested with a stand-in capture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

__all__ = ["Capture", "StepGraph", "cuda_capture"]

log = logging.getLogger(__name__)

Capture = Callable[[Callable[[], None], object], Callable[[], None]]  # (step, pool) -> replay


def cuda_capture(fn: Callable[[], None], pool: object) -> Callable[[], None]:
    """Record ``fn``'s kernels in a CUDA graph (nothing runs) and return the graph's ``replay``.

    Args:
        fn: the step; it must have run eagerly on this device first (cuBLAS and the allocator start lazily).
        pool: a memory pool handle shared by a trainer's graphs (``torch.cuda.graph_pool_handle()``).
    """
    graph = torch.cuda.CUDAGraph()
    # thread_local: the feed's read-ahead thread may pin host memory while the step is captured
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        fn()
    return graph.replay


class StepGraph:
    """Calls ``fn`` once per step: eagerly, or (``capture`` given) eagerly ``warmup`` times, then captured once and
    replayed from then on.

    The warm-up calls are real steps (the same function, eagerly, on a side stream on CUDA, as torch's CUDA graph
    notes ask); the capture runs nothing, so each call is exactly one step. A capture that fails (an operation a
    graph cannot hold) is logged once and the steps run eagerly from then on: the same arithmetic, only slower.

    Args:
        fn: one step, reading only tensors that outlive this object.
        capture: how to record ``fn`` (:func:`cuda_capture` on CUDA); None runs every step eagerly.
        warmup: eager steps before the capture.
        pool: passed to ``capture``, so that the graphs of one trainer share their memory.
    """

    def __init__(self, fn: Callable[[], None], capture: Capture | None, warmup: int = 3, pool: object = None):
        self.fn, self.capture, self.warmup, self.pool = fn, capture, warmup, pool
        self.replay: Callable[[], None] | None = None
        self.eager_steps = 0
        self.side = torch.cuda.Stream() if capture is cuda_capture else None

    @property
    def captured(self) -> bool:
        return self.replay is not None

    def __call__(self) -> None:
        if self.replay is not None:
            self.replay()
            return
        if self.capture is None or self.eager_steps < self.warmup:
            self._eager()
            return
        try:
            self.replay = self.capture(self.fn, self.pool)
        except Exception as e:  # noqa: BLE001 - any failed capture leaves the eager step, which is always sound
            log.warning("CUDA graph capture of the heads' step failed (%s: %s); training eagerly", type(e).__name__, e)
            self.capture = None
            self._eager()
            return
        self.replay()

    def _eager(self) -> None:
        self.eager_steps += 1
        if self.side is None:
            self.fn()
            return
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            self.fn()
        torch.cuda.current_stream().wait_stream(self.side)
