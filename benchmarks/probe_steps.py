"""Benchmark: the SGD heads' step rate before and after issue 20, and a sweep's probes packed vs one by one.

1. **steps**: SGD steps per second of a grid of heads on features resident on the device (one epoch, no scoring):
   - *old*: the step as it was before issue 20, copied here as the same-run baseline (:class:`OldHeads`: autograd
     through the folded heads, one torch.optim.SGD-style update per parameter, a Python batch iterator);
   - *new*: :class:`featcache.heads.MultiHeadProbe` (closed-form gradients on static buffers, one flat SGD update,
     the rows gathered by the step), eagerly;
   - *graph* (CUDA only): the same, each step a replay of a CUDA graph (the default on CUDA).
   Cases: ``small`` (D 256, C 10, batch 32: per-step overhead dominates, as on the CPU) and ``research`` (the
   ImageNet/iNat preset's batch 32 on 10,240 features, 1,000 classes; on CUDA 200,000 float16 rows resident), 2 heads.
   The old and new steps start from the same heads and see the same batches; their weights after the run are
   compared (``max |dW|``), a check that the faster step is the same step.
2. **packed**: a sweep's shape on one dataset: 5 synthetic float16 stores, probes cat1 of each (5 draws) and cat5;
   ``run_probe`` six times vs ``run_packed`` once (the union loaded once, one pass per epoch for all six), each
   probe's record compared with its record alone.

Targets (issue 20): on the CPU, new >= 2x old steps/s at small dims; on one H200, >= 5,000 steps/s at the research
case with the CUDA graph; the sweep's probes of one dataset in one pass.

Usage:
    python benchmarks/probe_steps.py                                 # CPU: both parts, about 2 minutes
    python benchmarks/probe_steps.py --device cuda --out steps.json  # what benchmarks/gpu_check.sh runs
    python benchmarks/probe_steps.py --parts steps --cases small --repeats 5
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from featcache import __version__
from featcache.devices import device_name, resolve_device
from featcache.feed_batches import BatchBuffer, as_feed
from featcache.heads import HeadConfig, MultiHeadProbe
from featcache.packed import run_packed
from featcache.probe import ProbeConfig, run_probe
from featcache.testing.stores import make_store

# D, C, batch, heads; rows resident and steps timed per device: (cpu, cuda)
CASES = {
    "small": {"D": 256, "C": 10, "B": 32, "rows": (12_800, 200_000), "steps": (1_200, 6_000)},
    "research": {"D": 10_240, "C": 1_000, "B": 32, "rows": (1_024, 200_000), "steps": (12, 6_000)},
}
OLD_STEPS_CUDA = 1_500  # the old and the eager new step on CUDA (about 2 ms and 1 ms a step): enough for their rates


# --- the step before issue 20 (featcache/heads.py at b3c6584), the same-run baseline -----------------------------
class _OldSGD:
    def __init__(self, params, decays, momentum, nesterov):
        self.params, self.decays, self.momentum, self.nesterov = params, decays, momentum, nesterov
        self.bufs = [None] * len(params)

    @torch.no_grad()
    def step(self, grads, lr):
        for i, (p, d, wd) in enumerate(zip(self.params, grads, self.decays, strict=True)):
            if wd is not None:
                d = torch.addcmul(d, wd, p)
            if self.momentum:
                if self.bufs[i] is None:
                    self.bufs[i] = d.clone()
                else:
                    self.bufs[i].mul_(self.momentum).add_(d)
                d = d.add(self.bufs[i], alpha=self.momentum) if self.nesterov else self.bufs[i]
            if isinstance(lr, list):
                p.addcmul_(d, lr[i], value=-1)
            else:
                p.add_(d, alpha=-lr)


class OldHeads:
    """The bn-linear heads' training loop before issue 20 (one lr; evaluation left out), for its step rate."""

    def __init__(self, cfg: HeadConfig, D: int, C: int, device: torch.device):
        self.cfg, self.D, self.C, self.device, self.dtype = cfg, D, C, device, torch.float32

    def fit(self, X, y):
        cfg, dev, H = self.cfg, self.device, len(self.cfg.grid)
        feed = as_feed(X)
        like = {"device": dev, "dtype": self.dtype}
        g = torch.Generator().manual_seed(cfg.seed)
        w = torch.empty(self.C, self.D).normal_(0.0, cfg.init_std, generator=g)
        self.weight_, self.bias_ = w.to(**like).repeat(H, 1, 1), torch.zeros(H, self.C, **like)
        self.gamma_, self.beta_ = torch.ones(H, self.D, **like), torch.zeros(H, self.D, **like)
        self.running_mean_, self.running_var_ = torch.zeros(self.D, **like), torch.ones(self.D, **like)
        params = [self.weight_, self.bias_, self.gamma_, self.beta_]
        wd = torch.tensor([wd for _, wd in cfg.grid], **like)
        sgd = _OldSGD(params, [wd[:, None, None], wd[:, None], None, None], cfg.momentum, cfg.nesterov)
        buffer = BatchBuffer(min(len(feed), cfg.batch_size), self.D, dev, self.dtype)
        sq = torch.empty_like(buffer.x)
        for epoch in range(cfg.epochs):
            lr = cfg.lr * cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), epoch)
            loss_sum = torch.zeros(H, device=dev, dtype=torch.float64)
            for p in params:
                p.requires_grad_(True)
            for x, yb in feed.batches(epoch, y, buffer, seed=cfg.seed, batch_size=cfg.batch_size):
                logits = self._forward(x, sq)
                losses = F.cross_entropy(logits.flatten(0, 1), yb.repeat_interleave(H), reduction="none")
                losses = losses.view(-1, H).mean(0)
                sgd.step(torch.autograd.grad(losses.sum(), params), lr)
                loss_sum += losses.detach().double() * len(yb)
            for p in params:
                p.requires_grad_(False)
        return self

    def _forward(self, x, sq):
        w, b = self.weight_, self.bias_
        mean = x.mean(0)
        x = x.sub_(mean)
        var = torch.mul(x, x, out=sq[: len(x)]).mean(0)
        with torch.no_grad():
            m, n = 0.1, x.shape[0]
            self.running_mean_.mul_(1 - m).add_(mean, alpha=m)
            self.running_var_.mul_(1 - m).add_(var * (n / (n - 1)), alpha=m)
        x = x.mul_(torch.rsqrt(var + 1e-5))
        b = b + (w * self.beta_[:, None, :]).sum(-1)
        w = w * self.gamma_[:, None, :]
        return (x @ w.flatten(0, 1).T + b.flatten()).unflatten(1, b.shape)


# --- part 1: steps/s ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fit, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fit()
    _sync(device)
    return time.perf_counter() - t


def steps_case(name: str, device: torch.device, repeats: int, steps: int | None) -> dict:
    """Steps/s of old, new (and graph on CUDA) on one case: the median and best of ``repeats`` runs each."""
    case, k = CASES[name], int(device.type == "cuda")
    D, C, B = case["D"], case["C"], case["B"]
    steps = steps or case["steps"][k]
    rows = max(case["rows"][k], steps * B)
    g = torch.Generator(device=device).manual_seed(0)
    X = torch.randn(rows, D, generator=g, device=device).mul_(torch.linspace(0.5, 2.0, D, device=device)).half()
    y = torch.randint(0, C, (rows,), generator=g, device=device)
    cfg = HeadConfig(epochs=1, batch_size=B, lr=0.01, milestones=(), weight_decays=(1e-4, 5e-4))  # 2 heads
    old_steps = min(steps, OLD_STEPS_CUDA) if device.type == "cuda" else steps
    runs = {"old": (old_steps, lambda n: OldHeads(cfg, D, C, device).fit(X[: n * B], y[: n * B]))}
    runs["new"] = (
        old_steps,
        lambda n: MultiHeadProbe(cfg, D, C, device=device, graphs=False).fit(X[: n * B], y[: n * B]),
    )
    if device.type == "cuda":
        runs["graph"] = (
            steps,
            lambda n: MultiHeadProbe(cfg, D, C, device=device, graphs=True).fit(X[: n * B], y[: n * B]),
        )
    for _, fit in runs.values():  # warm-up: allocators, cuBLAS, the first graph capture
        fit(8)
    rates: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(repeats):  # interleaved, so that a busy machine slows every method alike
        for method, (n, fit) in runs.items():
            rates[method].append(n / _timed(lambda fit=fit, n=n: fit(n), device))
    n = min(old_steps, 64)
    old, new = OldHeads(cfg, D, C, device).fit(X[: n * B], y[: n * B]), runs["new"][1](n)
    diff = float((old.weight_ - new.weight_).abs().max())
    out = {"case": name, "D": D, "C": C, "B": B, "heads": 2, "rows": rows, "steps": {m: r[0] for m, r in runs.items()},
           "median": {m: statistics.median(v) for m, v in rates.items()}, "best": {m: max(v) for m, v in rates.items()},
           "runs": rates, "max_weight_diff_old_new": diff, "compared_steps": n}  # fmt: skip
    return out


# --- part 2: packed vs one by one ----------------------------------------------------------------------------------
def build_stores(root: Path, n: int, dim: int, rows: int, classes: int) -> list[Path]:
    """``n`` float16 stores of one dataset: train and test splits, class means spread over every store."""
    rng = np.random.default_rng(0)
    sizes = {"train": rows, "test": max(rows // 5, classes)}
    labels = {s: np.arange(k) % classes for s, k in sizes.items()}
    means = rng.normal(size=(classes, n * dim)).astype(np.float32) * 0.15
    paths = []
    for k in range(n):
        splits = {}
        for s, count in sizes.items():
            X = np.random.default_rng([k, count]).normal(size=(count, dim)).astype(np.float32)
            X += means[labels[s], k * dim : (k + 1) * dim]
            splits[s] = (X.astype(np.float16), labels[s])
        paths.append(make_store(root / "sweep" / f"m{k}.zarr", splits, name=f"m{k}", dtype="float16", chunk_rows=None))
    return paths


def _numbers(r) -> tuple:
    return (
        r.key,
        [dataclasses.astuple(h) for h in r.heads],
        dataclasses.astuple(r.selected),
        dataclasses.astuple(r.research),
    )


def packed_case(device: torch.device, dim: int, rows: int, classes: int, epochs: int, repeats: int) -> dict:
    heads = HeadConfig(epochs=epochs, batch_size=32, lr=0.01, milestones=(max(epochs - 1, 1),),
                       weight_decays=(1e-4, 5e-4))  # fmt: skip
    times: dict[str, list[float]] = {"separate": [], "packed": []}
    with tempfile.TemporaryDirectory(prefix="featcache-steps-") as tmp:
        t = time.perf_counter()
        paths = build_stores(Path(tmp), 5, dim, rows, classes)
        build_s = time.perf_counter() - t
        draws = [(p,) for p in paths] + [tuple(paths)]  # cat1 x 5 draws + cat5
        configs = [ProbeConfig(d, heads, device=str(device), views=0) for d in draws]
        for _ in range(repeats):  # interleaved, so that a busy machine slows both alike
            t = time.perf_counter()
            alone = [run_probe(c) for c in configs]
            times["separate"].append(time.perf_counter() - t)
            t = time.perf_counter()
            packed = list(run_packed(configs))
            times["packed"].append(time.perf_counter() - t)
    same = [_numbers(a) == _numbers(p) for a, p in zip(alone, packed, strict=True)]
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"stores": 5, "dim": dim, "rows": rows, "classes": classes, "epochs": epochs, "probes": len(configs),
            "build_s": build_s, "seconds": times, "median_s": median, "ratio": median["separate"] / median["packed"],
            "memory": packed[0].memory, "same_records": same,
            "test_top1": {"separate": [r.selected.test_top1 for r in alone],
                          "packed": [r.selected.test_top1 for r in packed]}}  # fmt: skip


# --- the run -------------------------------------------------------------------------------------------------------
def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--parts", default="steps,packed", help="steps, packed or both")
    p.add_argument("--cases", default="small,research", help=f"step cases: {', '.join(CASES)}")
    p.add_argument("--steps", type=int, help="steps timed per run (default: per case and device)")
    p.add_argument(
        "--repeats", type=int, default=3, help="timed runs per method (and per packed/separate), interleaved"
    )
    p.add_argument("--pack-dim", type=int, help="features per store (default 256 on the CPU, 2048 on CUDA)")
    p.add_argument("--pack-rows", type=int, help="train rows (default 10,000 on the CPU, 20,000 on CUDA)")
    p.add_argument("--pack-classes", type=int, default=100)
    p.add_argument("--epochs", type=int, default=2, help="epochs of each packed/separate probe")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    a = p.parse_args(argv)
    for name in a.cases.split(","):
        if name not in CASES:
            p.error(f"--cases: unknown case {name!r}; known: {', '.join(CASES)}")
    return a


def main(argv=None) -> int:
    a = _parse(argv)
    device = resolve_device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(a.threads)
    print(f"featcache {__version__} benchmark: the heads' step and packed probes")
    print(f"device   {device} = {device_name(device)}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    load = ", load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else ""
    print(f"date     {time.strftime('%Y-%m-%d %H:%M:%S %z')}; python {platform.python_version()}{load}", flush=True)
    record: dict = {"benchmark": "probe_steps", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": str(device),
                    "device_name": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "featcache": __version__,
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}  # fmt: skip
    ok = True
    if "steps" in a.parts:
        cases = [steps_case(name, device, a.repeats, a.steps) for name in a.cases.split(",")]
        record["steps"] = cases
        methods = ["old", "new"] + (["graph"] if device.type == "cuda" else [])
        print(f"\nsteps/s, 2 heads, median (best) of {a.repeats} runs; ratio to old on the median")
        print(f"{'case':<9} {'D':>6} {'C':>5} {'B':>3} " + " ".join(f"{m:>17}" for m in methods) + "   ratio  max|dW|")
        for c in cases:
            cells = " ".join(f"{_rate(c['median'][m]):>8} ({_rate(c['best'][m]):>6})" for m in methods)
            ratio = c["median"][methods[-1]] / c["median"]["old"]
            diff = c["max_weight_diff_old_new"]
            print(f"{c['case']:<9} {c['D']:>6} {c['C']:>5} {c['B']:>3} {cells} {ratio:>6.1f}x {diff:.1e}")
        small = next((c for c in cases if c["case"] == "small"), None)
        if device.type == "cpu" and small:
            ratio = small["median"]["new"] / small["median"]["old"]
            print(f"target   CPU small: new >= 2x old steps/s: {ratio:.2f}x {'ok' if ratio >= 2 else 'MISSED'}")
        research = next((c for c in cases if c["case"] == "research"), None)
        if device.type == "cuda" and research:
            rate = research["median"]["graph"]
            print(f"target   GPU research: >= 5,000 steps/s: {rate:,.0f} {'ok' if rate >= 5000 else 'MISSED'}")
    if "packed" in a.parts:
        gpu = device.type == "cuda"
        dim, rows = a.pack_dim or (2048 if gpu else 256), a.pack_rows or (20_000 if gpu else 10_000)
        p = packed_case(device, dim, rows, a.pack_classes, a.epochs, a.repeats)
        record["packed"] = p
        shape = f"5 float16 stores x {dim} features, {rows} train rows, {a.pack_classes} classes, {a.epochs} epochs"
        print(f"\npacked: {shape}, batch 32, 2 weight decays; cat1 x 5 draws + cat5 (built in {p['build_s']:.1f} s)")
        for method, what in (("separate", f"one by one (run_probe x {p['probes']})"),
                             ("packed", f"packed (run_packed, {p['memory']})")):  # fmt: skip
            runs = ", ".join(f"{v:.1f}" for v in p["seconds"][method])
            print(f"  {what:<44} median {p['median_s'][method]:6.1f} s  (runs: {runs})")
        print(f"  one by one / packed: {p['ratio']:.2f}x on the medians; records identical to the separate ones: "
              f"{sum(p['same_records'])}/{len(p['same_records'])}")  # fmt: skip
        ok &= all(p["same_records"])
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
