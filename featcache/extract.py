"""Phase 1: run checkpoints once over a dataset and write their features to stores.

Data flows one way: dataset -> batched preprocessing (:mod:`featcache.loaders`) -> every backbone
on the same batch -> per-store chunk buffers -> a writer thread that writes whole chunks
(:mod:`featcache.store`). Batch i+1 is prepared in the background while batch i runs on the
device and finished chunks are written, so the device rarely waits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import queue
import threading
import time
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
import zarr

from . import __version__
from .config import CheckpointSpec, DatasetSpec, TransformSpec
from .data import ArrayDataset, build_dataset
from .devices import PRECISIONS, resolve_device, resolve_precision
from .errors import ConfigError
from .loaders import BACKENDS, Batch, batches
from .models import LoadedBackbone, load_backbone
from .progress import NullProgress, ProgressFactory
from .store import (
    CheckpointRef,
    ComputeRef,
    DatasetRef,
    PreprocessRef,
    Provenance,
    Software,
    SplitData,
    SplitWriter,
    StoreWriter,
    chunk_rows_for,
    store_path,
)

__all__ = ["ExtractConfig", "ExtractReport", "extract", "prepare_model"]

log = logging.getLogger(__name__)

COMPILE_MIN_ROWS = 500_000  # below this the ~15 s compile costs more than the faster forward saves


def _choice(value: str, allowed, option: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{option} {value!r} is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything one ``featcache extract`` call needs; validated on construction."""

    checkpoints: tuple[CheckpointSpec, ...]
    dataset: DatasetSpec
    transform: TransformSpec
    cache_dir: Path
    splits: tuple[str, ...] = ()  # empty: all of the dataset's splits
    store_name: str | None = None
    batch_size: int = 256
    dtype: str = "float16"
    precision: str = "auto"
    device: str = "auto"
    workers: int = min(8, os.cpu_count() or 1)
    limit: int | None = None
    overwrite: bool = False
    trust_checkpoint: bool = False
    compile: str = "auto"
    backend: str = "auto"
    on_bad_image: str = "error"
    compression: str = "none"
    chunk_rows: int | None = None  # rows per store chunk; default about CHUNK_BYTES

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ConfigError(f"--chunk-rows must be a positive integer, got {self.chunk_rows}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be a positive integer, got {self.limit}")
        _choice(self.dtype, ("float16", "float32"), "--dtype")
        _choice(self.precision, ("auto", *PRECISIONS), "--precision")
        _choice(self.compile, ("auto", "on", "off"), "--compile")
        _choice(self.backend, ("auto", *BACKENDS), "--preprocess")
        _choice(self.on_bad_image, ("error", "skip"), "--on-bad-image")
        _choice(self.compression, ("none", "zstd"), "--compression")
        if self.store_name and len(self.checkpoints) != 1:
            raise ConfigError("--store-name names one store: give exactly one checkpoint with --ckpt")
        for s in self.splits:
            if s not in self.dataset.splits:
                raise ConfigError(f"--split {s!r}: dataset '{self.dataset.name}' has {', '.join(self.dataset.splits)}")


@dataclass
class ExtractReport:
    """What a call did: per store status, and where the time went."""

    stores: list[dict] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0
    data_s: float = 0.0
    model_s: float = 0.0  # host time in the forward step (on CUDA: queueing it and waiting for the GPU to keep up)
    write_s: float = 0.0
    gpu_s: float | None = None  # CUDA only: the GPU's own time for the forward passes and feature copies

    def summary(self) -> str:
        """One line: images, stores, rate and where the host's time went (on CUDA also the GPU's)."""
        rate = self.images / self.seconds if self.seconds else 0.0
        line = (
            f"{self.images} images x {sum(s['status'] != 'already complete' for s in self.stores)} store(s) "
            f"in {self.seconds:.1f}s ({rate:,.1f} images/s); waiting for data {self.data_s:.1f}s, "
            f"model {self.model_s:.1f}s, writer busy {self.write_s:.1f}s"
        )
        if self.gpu_s is not None:
            line += f"; GPU busy with the models {self.gpu_s:.1f}s (CUDA events; the host times above overlap it)"
        return line


class _ChunkWriter:
    """A thread that writes finished chunks while the device computes the next ones."""

    def __init__(self, depth: int = 3):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.busy_s = 0.0
        self.thread = threading.Thread(target=self._run, name="featcache-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.q.get()) is not None:
            try:
                if self.error is None:
                    t0 = time.perf_counter()
                    writer, i, feats, event, skipped = job
                    if event is not None:
                        event.synchronize()  # a blocking event: the thread sleeps instead of spinning
                    block = feats.numpy()
                    start = writer.bounds(i)[0]
                    block[[r - start for r in skipped]] = 0  # undecodable images: zero rows, listed as skipped
                    writer.write_chunk(i, block, skipped)
                    self.busy_s += time.perf_counter() - t0
            except BaseException as e:
                self.error = e
            finally:
                self.q.task_done()
        self.q.task_done()

    def submit(self, writer: SplitWriter, i: int, buf: torch.Tensor, skipped: list[int]) -> None:
        self.check()
        event = None
        if buf.device.type == "cuda":
            host = torch.empty(buf.shape, dtype=buf.dtype, pin_memory=True)
            host.copy_(buf, non_blocking=True)  # queued on buf's device's current stream
            event = torch.cuda.Event(blocking=True)
            # that stream, not the current device's: with cuda:N != current device the event would be
            # recorded elsewhere, complete at once, and the writer would read the buffer before the copy lands
            event.record(torch.cuda.current_stream(buf.device))
            buf = host
        self.q.put((writer, i, buf, event, skipped))

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.q.put(None)
        self.q.join()
        self.thread.join()
        self.check()


def _provenance(
    cfg: ExtractConfig, bb: LoadedBackbone, device: torch.device, precision: str, backend: str, compiled: bool
) -> Provenance:
    versions = (__version__, torch.__version__, torchvision.__version__, zarr.__version__, np.__version__)
    return Provenance(
        software=Software(*versions, platform.python_version()),
        dataset=DatasetRef(cfg.dataset.name, cfg.dataset.format, cfg.limit),
        checkpoint=CheckpointRef(
            name=bb.name,
            arch=bb.arch,
            sha256=bb.sha256,
            path=str(bb.path),
            ema=any(c.ema for c in cfg.checkpoints if c.name == bb.name),
        ),
        layer=bb.layer,
        feature_dim=bb.feature_dim,
        dtype=cfg.dtype,
        precision=precision,
        transform=cfg.transform.to_dict(),
        preprocess=PreprocessRef(backend, device.type),
        compute=ComputeRef(device.type, channels_last=device.type == "cuda", compiled=compiled),
    )


def _split_data(dataset, split: str, limit: int | None) -> SplitData:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    fp = dataset.fingerprint()
    if limit is not None:  # a prefix is a different sample set: it gets its own fingerprint
        fp = hashlib.sha256(f"{fp}:first{n}".encode()).hexdigest()
    return SplitData(split, dataset.ids[:n], dataset.targets[:n], fp, dataset.classes)


def _segments(writers: list[SplitWriter]) -> list[tuple[int, int]]:
    """Row intervals to compute: cut at every chunk boundary of every store, kept if any store needs them."""
    cuts = sorted({b for w in writers for i in range(w.n_chunks) for b in w.bounds(i)})
    need = [
        (a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=False) if any(not w.done(a // w.chunk_rows) for w in writers)
    ]
    return need


def extract(cfg: ExtractConfig, progress: ProgressFactory = NullProgress) -> ExtractReport:
    """Extract the features of every checkpoint in ``cfg`` on every split; resume what was started.

    Returns:
        An :class:`ExtractReport`; a store already complete is reported as such and not touched.

    Raises:
        ConfigError, CheckpointError, DatasetError: bad input, before any store is created.
        BadImageError: an image cannot be decoded and ``on_bad_image`` is ``error``.
        StoreError, StoreLockedError, StoreMismatchError: the store cannot be written.
    """
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    splits = cfg.splits or cfg.dataset.splits
    # Validate data and checkpoints before creating any store: bad input leaves nothing behind.
    datasets = {s: build_dataset(cfg.dataset, s) for s in splits}
    data = {s: _split_data(ds, s, cfg.limit) for s, ds in datasets.items()}
    backbones = [load_backbone(c, trust=cfg.trust_checkpoint) for c in cfg.checkpoints]
    arrays = all(isinstance(ds, ArrayDataset) for ds in datasets.values())
    backend = cfg.backend if cfg.backend != "auto" else ("device" if arrays or device.type == "cuda" else "pil")
    rows_total = sum(len(d.ids) for d in data.values())
    compiled = cfg.compile == "on" or (
        cfg.compile == "auto" and device.type == "cuda" and rows_total >= COMPILE_MIN_ROWS
    )
    report = ExtractReport()
    stores: list[StoreWriter] = []
    try:
        for bb in backbones:
            path = store_path(cfg.cache_dir, cfg.dataset.name, cfg.store_name or bb.name)
            prov = _provenance(cfg, bb, device, precision, backend, compiled)
            stores.append(StoreWriter(path, prov, overwrite=cfg.overwrite))
        models = [prepare_model(bb.module, device, compiled) for bb in backbones]
        chunk_rows = cfg.chunk_rows or chunk_rows_for(max(bb.feature_dim for bb in backbones), cfg.dtype)
        status = {s.path: "already complete" for s in stores}
        for split in splits:
            writers = [
                s.split(data[split], bb.feature_dim, cfg.dtype, chunk_rows=chunk_rows, compression=cfg.compression)
                for s, bb in zip(stores, backbones, strict=True)
            ]
            for w in writers:
                if not w.complete:
                    started = len(w.pending()) < w.n_chunks or status[w.store.path] == "resumed"
                    status[w.store.path] = "resumed" if started else "written"
            run = _SplitRun(cfg, datasets[split], writers, models, device, precision, compiled, backend)
            bar = progress(run.n_rows, f"{cfg.dataset.name}/{split}") if run.n_rows else NullProgress()
            run.execute(report, bar)
        for s, bb in zip(stores, backbones, strict=True):
            rows = {sp: len(data[sp].ids) for sp in splits}
            report.stores.append(
                {
                    "name": s.path.stem,
                    "checkpoint": bb.name,
                    "path": str(s.path),
                    "status": status[s.path],
                    "dim": bb.feature_dim,
                    "rows": rows,
                }
            )
    finally:
        for s in stores:
            s.close()
    report.seconds = time.perf_counter() - t_start
    return report


def prepare_model(module: torch.nn.Module, device: torch.device, compiled: bool) -> torch.nn.Module:
    """A backbone as extraction runs it: on ``device``, eval mode, channels_last on CUDA, compiled if asked."""
    module = module.to(device).eval()
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    return torch.compile(module) if compiled else module


class _SplitRun:
    """One split, all its unfinished stores: batches in, whole chunks out."""

    def __init__(self, cfg, dataset, writers, models, device, precision, compiled, backend):
        self.cfg, self.dataset, self.device, self.backend = cfg, dataset, device, backend
        self.writers = [w for w in writers if not w.complete]
        # (writer, model, chunks it still needs): listed once here, not stat-ed per batch (NFS round trips)
        self.todo = [(w, m, set(p)) for w, m in zip(writers, models, strict=True) if (p := w.pending())]
        self.segments = _segments([w for w, _, _ in self.todo]) if self.todo else []
        self.n_rows = sum(b - a for a, b in self.segments)
        self.pad_to = cfg.batch_size if compiled else 0
        self.autocast = torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")
        self.buffers: dict[tuple[int, int], torch.Tensor] = {}  # (store k, chunk i) -> rows being filled
        self.filled: dict[tuple[int, int], int] = {}
        self.skipped: dict[tuple[int, int], list[int]] = {}

    def execute(self, report: ExtractReport, bar) -> None:
        writer = _ChunkWriter()
        gpu = _ComputeStream(self.device) if self.device.type == "cuda" else None
        try:
            it = batches(
                self.dataset,
                self.cfg.transform,
                self.segments,
                batch_size=self.cfg.batch_size,
                device=self.device,
                backend=self.backend,
                workers=self.cfg.workers,
            )
            while True:
                t0 = time.perf_counter()
                batch = next(it, None)
                t1 = time.perf_counter()
                report.data_s += t1 - t0
                if batch is None:
                    break
                if batch.bad and self.cfg.on_bad_image == "error":
                    raise batch.bad[0]
                with gpu.run(batch) if gpu is not None else nullcontext():
                    self._forward_all(batch, writer)
                report.model_s += time.perf_counter() - t1
                report.images += len(batch.x)
                bar.update(len(batch.x))
            if gpu is not None:
                t0 = time.perf_counter()
                gpu.drain()
                report.model_s += time.perf_counter() - t0
                report.gpu_s = (report.gpu_s or 0.0) + gpu.busy_s
            writer.close()
        finally:
            bar.close()
            if writer.thread.is_alive():  # failed mid-split: finish the queued chunks while the lock is ours
                writer.q.put(None)
                writer.thread.join()
            report.write_s += writer.busy_s
        for w in self.writers:
            w.finalize()

    def _forward_all(self, batch, writer: _ChunkWriter) -> None:
        x = batch.x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else batch.x
        n, bad = len(x), [e.row for e in batch.bad]
        if bad:
            log.warning("skipping %d undecodable image(s), first: %s", len(bad), batch.bad[0].path)
        for k, (w, model, pending) in enumerate(self.todo):
            i = batch.start // w.chunk_rows
            if i not in pending:
                continue
            feats = _forward(model, x, self.pad_to, self.autocast)
            key = (k, i)
            if key not in self.buffers:
                a, b = w.bounds(i)
                self.buffers[key] = torch.empty(b - a, feats.shape[1], dtype=torch.float32, device=self.device)
                self.filled[key], self.skipped[key] = 0, []
            off = batch.start - w.bounds(i)[0]
            self.buffers[key][off : off + n] = feats.float()
            self.filled[key] += n
            self.skipped[key] += bad
            if self.filled[key] == len(self.buffers[key]):
                writer.submit(w, i, self.buffers.pop(key), self.skipped.pop(key))


def _forward(model: torch.nn.Module, x: torch.Tensor, pad_to: int, autocast) -> torch.Tensor:
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
        return model(x)[:n]


class _ComputeStream:
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
