"""Phase 1's inner loop: batches through every backbone into whole-chunk buffers, and a thread that writes them.

For one split :class:`SplitRun` takes the arrays still missing chunks (every store's features and views, this
shard's chunks only), asks :mod:`featcache.loaders` for the batches covering them, runs each model once per
input view and batch, fills per-chunk buffers and hands each full chunk to :class:`ChunkWriter`. On CUDA the
forward passes run on a stream of their own (:class:`ComputeStream`). :mod:`featcache.extract` plans the run,
opens the stores and completes them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from .chunk_writer import MAX_THREADS, ChunkWriter
from .devices import PRECISIONS
from .errors import BadImagesError
from .loaders import Batch, batches
from .store import ArrayWriter

__all__ = ["ChunkWriter", "ComputeStream", "ExtractReport", "SplitRun", "Target", "forward", "prepare_model"]

log = logging.getLogger(__name__)


@dataclass
class ExtractReport:
    """What a call did: per store status, and where the time went."""

    stores: list[dict] = field(default_factory=list)
    images: int = 0
    view_images: int = 0  # augmented views made (each one more forward pass per store)
    seconds: float = 0.0
    data_s: float = 0.0
    model_s: float = 0.0  # host time in the forward step (on CUDA: queueing it and waiting for the GPU to keep up)
    write_s: float = 0.0
    gpu_s: float | None = None  # CUDA only: the GPU's own time for the forward passes and feature copies
    # wall seconds of the call's steps, in order (see :meth:`breakdown`); steps that overlap others are timed where
    # the call waits for them
    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str):
        """Add the body's wall time to ``phases[name]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0

    def breakdown(self) -> list[str]:
        """Where a call's time went, one line a step, and what is fixed: every step but the steady batches."""
        width = max((len(n) for n in self.phases), default=0)
        lines = [f"  {name:<{width}} {s:7.2f} s" for name, s in self.phases.items()]
        steady = self.phases.get("batches after the first", 0.0)
        total = sum(self.phases.values())
        lines.append(f"  {'fixed cost':<{width}} {total - steady:7.2f} s of {total:.2f} s (all but the steady batches)")
        return lines

    def summary(self) -> str:
        """One line: images, stores, rate and where the host's time went (on CUDA also the GPU's)."""
        rate = self.images / self.seconds if self.seconds else 0.0
        views = f" + {self.view_images} augmented views" if self.view_images else ""
        crops = f", {(self.images + self.view_images) / self.seconds:,.1f} crops/s" if views and self.seconds else ""
        line = (
            f"{self.images} images{views} x {sum(s['status'] != 'already complete' for s in self.stores)} store(s) "
            f"in {self.seconds:.1f}s ({rate:,.1f} images/s{crops}); waiting for data {self.data_s:.1f}s, "
            f"model {self.model_s:.1f}s, writer busy {self.write_s:.1f}s"
        )
        if self.gpu_s is not None:
            line += f"; GPU busy with the models {self.gpu_s:.1f}s (CUDA events; the host times above overlap it)"
        return line


def prepare_model(module: torch.nn.Module, device: torch.device, compiled: bool) -> torch.nn.Module:
    """A backbone as extraction runs it: on ``device``, eval mode, channels_last on CUDA, compiled if asked."""
    module = module.to(device).eval()
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    return torch.compile(module) if compiled else module


@dataclass
class Target:
    """One array to fill: a split's features or one of its views, from one model output."""

    array: ArrayWriter
    model: str  # the checkpoint whose model computes it
    output: int | None  # which output, with several layers
    pending: set[int] = field(default_factory=set)


class SplitRun:
    """One split, all its unfinished arrays (every store's features and views): batches in, whole chunks out."""

    def __init__(self, cfg, plan, dataset, writers, targets: list[Target], models, maker, views, shard):
        self.cfg, self.plan, self.dataset, self.device = cfg, plan, dataset, plan.device
        self.writers, self.models, self.maker, self.n_views = writers, models, maker, views
        # chunks each array still needs (this shard's: i % N == I): listed once here, not stat-ed per batch
        for t in targets:
            t.pending = {i for i in t.array.pending() if shard is None or i % shard[1] == shard[0]}
        self.todo = [t for t in targets if t.pending]
        self.views = sorted({t.array.view for t in self.todo if t.array.view is not None})
        self.segments = _segments(self.todo) if self.todo else []
        self.n_rows = sum(b - a for a, b in self.segments)
        self.pad_to = cfg.batch_size if plan.compiled else 0
        dtype, enabled = PRECISIONS[plan.precision], plan.precision != "fp32"
        self.autocast = torch.autocast(self.device.type, dtype=dtype, enabled=enabled)
        self.buffers: dict[tuple[int, int], torch.Tensor] = {}  # (target k, chunk i) -> rows being filled
        self.filled: dict[tuple[int, int], int] = {}
        self.skipped: dict[tuple[int, int], list[int]] = {}

    def execute(self, report: ExtractReport, bar, scale: int = 1) -> None:
        stores = len({id(t.array.store) for t in self.todo})
        writer, bad = ChunkWriter(threads=min(MAX_THREADS, stores)), []
        gpu = ComputeStream(self.device) if self.device.type == "cuda" else None
        try:
            it = batches(
                self.dataset,
                self.plan.transform,
                self.segments,
                batch_size=self.cfg.batch_size,
                device=self.device,
                backend=self.plan.backend,
                workers=self.cfg.workers,
                maker=self.maker,
                views=self.views,
            )
            first, steady = True, time.perf_counter()
            while True:
                t0 = time.perf_counter()
                batch = next(it, None)
                t1 = time.perf_counter()
                report.data_s += t1 - t0
                if first:  # readers or worker processes starting, the first files read and decoded
                    report.phases["first batch"] = report.phases.get("first batch", 0.0) + t1 - t0
                if batch is None:
                    break
                if self.cfg.on_bad_image == "error" and (batch.bad or bad):
                    # decode the rest of the split, computing nothing, so that one run names every bad image
                    bad += batch.bad
                    bar.update(len(batch.x) * scale)
                    continue
                with gpu.run(batch) if gpu is not None else nullcontext():
                    self._forward_all(batch, writer)
                t2 = time.perf_counter()
                report.model_s += t2 - t1
                if first:  # kernels loaded, cuDNN's choices, a compile
                    report.phases["first forward"] = report.phases.get("first forward", 0.0) + t2 - t1
                    first, steady = False, t2
                report.images += len(batch.x)
                report.view_images += len(batch.x) * len(batch.views)
                bar.update(len(batch.x) * scale)
            if gpu is not None:
                t0 = time.perf_counter()
                gpu.drain()
                report.model_s += time.perf_counter() - t0
                report.gpu_s = (report.gpu_s or 0.0) + gpu.busy_s
            t0 = time.perf_counter()
            report.phases["batches after the first"] = report.phases.get("batches after the first", 0.0) + t0 - steady
            with report.phase("last chunks written"):
                writer.close()
            if bad:
                raise BadImagesError(sorted(bad, key=lambda e: e.row)) if len(bad) > 1 else bad[0]
        finally:
            bar.close()
            writer.stop()  # failed mid-split: finish the queued chunks while the lock is ours
            report.write_s += writer.busy_s

    def _forward_all(self, batch, writer: ChunkWriter) -> None:
        n, bad = len(batch.x), [e.row for e in batch.bad]
        if bad:
            log.warning("skipping %d undecodable image(s), first: %s", len(bad), batch.bad[0].path)
        outputs: dict[tuple[str, int | None], object] = {}  # each model runs once per input view
        for k, t in enumerate(self.todo):
            i = batch.start // t.array.chunk_rows
            if i not in t.pending:
                continue
            view = t.array.view
            if (t.model, view) not in outputs:
                x = batch.x if view is None else batch.views[view]
                if self.device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                outputs[(t.model, view)] = forward(self.models[t.model], x, self.pad_to, self.autocast)
            out = outputs[(t.model, view)]
            feats = out if t.output is None else out[t.output]
            key = (k, i)
            if key not in self.buffers:
                a, b = t.array.bounds(i)
                self.buffers[key] = torch.empty(b - a, feats.shape[1], dtype=torch.float32, device=self.device)
                self.filled[key], self.skipped[key] = 0, []
            off = batch.start - t.array.bounds(i)[0]
            self.buffers[key][off : off + n] = feats.float()
            self.filled[key] += n
            self.skipped[key] += bad
            if self.filled[key] == len(self.buffers[key]):
                writer.submit(t.array, i, self.buffers.pop(key), self.skipped.pop(key))


def forward(model: torch.nn.Module, x: torch.Tensor, pad_to: int, autocast) -> torch.Tensor:
    """``model(x)`` under inference mode and ``autocast``; a batch shorter than ``pad_to`` is padded with zeros.

    A compiled model is specialised to one input: shape, strides and dispatch keys. So the padding is built
    before inference mode (an inference tensor has other dispatch keys than the full batches) and in the full
    batches' memory layout (channels_last on CUDA); otherwise the last batch compiles the model again.
    """
    n = len(x)
    if n < pad_to:
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        x = torch.cat([x, x.new_zeros((pad_to - n, *x.shape[1:]))])
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    with torch.inference_mode(), autocast:
        out = model(x)
        return tuple(o[:n] for o in out) if isinstance(out, tuple) else out[:n]


class ComputeStream:
    """CUDA: the forward passes on a stream of their own, at most ``depth`` batches queued ahead of the GPU.

    The producer thread prepares batches on its thread's default stream, where torchvision's nvJPEG decoder
    and every synchronising host-to-device copy also wait. On that same stream the forward passes would be
    serialised with all of it, and prefetching would become lock-step. A pool stream is non-blocking, so it
    is not ordered with the default stream: each batch is handed over with its ready event. The queue bound
    keeps the host from running thousands of batches ahead (their inputs would pile up in GPU memory), and
    the events time the GPU's own work for the report.
    """

    def __init__(self, device: torch.device, depth: int = 2):
        self.device, self.depth = device, depth
        self.stream = torch.cuda.Stream(device)
        self.queued: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque()
        self.busy_s = 0.0

    @contextmanager
    def run(self, batch: Batch):
        """Run the body on the stream, after ``batch`` is ready; then wait for the oldest batch over ``depth``."""
        if batch.ready is not None:
            self.stream.wait_event(batch.ready)
        batch.x.record_stream(self.stream)  # made on the producer's stream: not reused before this one is done
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True, blocking=True)
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            start.record(self.stream)
            yield
            end.record(self.stream)
        self.queued.append((start, end))
        while len(self.queued) > self.depth:
            self._retire()

    def drain(self) -> None:
        """Wait for every queued batch."""
        while self.queued:
            self._retire()

    def _retire(self) -> None:
        start, end = self.queued.popleft()
        end.synchronize()
        self.busy_s += start.elapsed_time(end) / 1000


def _segments(targets: list[Target]) -> list[tuple[int, int]]:
    """Row intervals to compute: cut at every chunk boundary of every array, kept if any array needs them
    (``pending``: its chunks still missing, this shard's only)."""
    cuts = sorted({b for t in targets for i in range(t.array.n_chunks) for b in t.array.bounds(i)})
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=False)
            if any(a // t.array.chunk_rows in t.pending for t in targets)]  # fmt: skip
