"""``featcache sweep``: a grid of (dataset, row, draw) probes as one idempotent command.

A sweep config (YAML, see ``configs/sweeps/timecat.yaml``) names *rows* (e.g. cat1, cat2, cat4, cat5: each a list
of *draws*, a draw being a ``--ckpt`` value whose checkpoints are concatenated) and *datasets*. Running it:

1. per dataset, extracts every store that is missing, incomplete or short of views, in one :func:`extract` call
   (every checkpoint shares each decoded batch);
2. probes every (dataset, row, draw) whose result is not yet in the results log. A probe is identified by
   :attr:`ProbeRecord.key` (stores by checkpoint hash and how their features were made, dataset, splits, preset,
   solver, hyperparameters, views), predicted before it runs by :func:`featcache.probe.probe_key_for`. Each
   record is appended atomically once its probe finishes, so a sweep killed at any moment and run again finishes
   what is missing, and never logs a result twice; a probe is claimed before it runs (:func:`featcache.results.
   claim`), so a second sweep on the same log skips it, and waits for it at the end of the dataset. Records are
   tagged ``sweep:<name> <row> d<k>``. The probes of a dataset that share their batches (its rows and draws, with
   one preset) are packed: trained in one pass over the union of their stores, each getting the record it gets
   alone (:mod:`featcache.packed`).

Stores extracted otherwise than the sweep now asks (another checkpoint file, precision, preprocessing, views
seed, ...) are not used: their probes stay pending and the run refuses them (:mod:`featcache.sweep_check`, which
also checks, before anything runs, what the run would fail on).

Library code: progress goes to the ``echo`` callable, never to stdout.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import extract_config, probe_config
from .config import CheckpointSpec, DatasetSpec, Paths, Registry
from .config.sweep import SweepConfig, SweepDataset, SweepExtract, SweepProbe, SweepRow, find_sweep, load_sweep
from .errors import ConfigError
from .extract import ExtractConfig, extract
from .models import resolve_preprocessing
from .probe import ProbeConfig, probe_key_for
from .progress import NullProgress, ProgressFactory
from .results import EvaluationRecord, ProbeRecord, load_evaluations, load_records
from .store import store_path
from .sweep_check import Wanted, check_plan, store_state
from .sweep_heads import eval_extracts, with_heads
from .sweep_probes import Prober, research_text

__all__ = [
    "SweepRow",
    "SweepDataset",
    "SweepExtract",
    "SweepProbe",
    "SweepConfig",
    "RowInfo",
    "ExtractJob",
    "ProbeJob",
    "SweepPlan",
    "SweepResult",
    "find_sweep",
    "load_sweep",
    "tag_for",
    "plan_sweep",
    "check_plan",
    "run_sweep",
]

log = logging.getLogger(__name__)


# --- the plan ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowInfo:
    """A row as resolved: how many models each draw concatenates and the pretraining budget."""

    name: str
    models: int
    draws: int
    steps_per_model: int | None
    total_steps: int | None


@dataclass(frozen=True)
class ExtractJob:
    """The stores of one dataset that need extracting (missing, incomplete or short of views), in one call."""

    dataset: str
    config: ExtractConfig
    reasons: tuple[str, ...]  # one per checkpoint of ``config``: missing, incomplete, 0/4 views, stale, ...
    refusals: tuple[str, ...] = ()  # why stale stores cannot be extracted again (the run refuses them)


@dataclass(frozen=True)
class ProbeJob:
    """One (dataset, row, draw) probe; ``key`` is None while one of its stores is not extracted yet."""

    dataset: str
    row: str
    draw: int
    stores: tuple[str, ...]
    config: ProbeConfig
    key: str | None


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep would do now: extractions, probes, and the results already in the log (by key)."""

    sweep: SweepConfig
    rows: tuple[RowInfo, ...]
    extracts: tuple[ExtractJob, ...]
    probes: tuple[ProbeJob, ...]
    done: dict[str, ProbeRecord]  # key -> the newest record with it
    evaluations: tuple[EvaluationRecord, ...] = ()  # of saved heads, oldest first (the report's per-model column)
    checkpoints: tuple[CheckpointSpec, ...] = ()  # every checkpoint of the rows, with the steps its row says

    def pending(self) -> list[ProbeJob]:
        return [p for p in self.probes if p.key is None or p.key not in self.done]

    def record(self, job: ProbeJob) -> ProbeRecord | None:
        return self.done.get(job.key) if job.key is not None else None

    def describe(self) -> list[dict]:
        """One row per step (for ``--dry-run``): extractions, then every probe with its status."""
        out = [{"step": "extract", "dataset": e.dataset, "row": "-", "draw": "-",
                "stores": _names([c.name for c in e.config.checkpoints]),
                "status": "to run: " + ", ".join(sorted(set(e.reasons)))} for e in self.extracts]  # fmt: skip
        for p in self.probes:
            rec = self.record(p)
            status = f"done: top-1 {rec.selected.test_top1:.2f}{research_text(rec)} ({rec.id})" if rec else "to run"
            status = status if p.key else "to run, after extract"
            out.append({"step": "probe", "dataset": p.dataset, "row": p.row, "draw": f"d{p.draw}",
                        "stores": ",".join(p.stores), "status": status})  # fmt: skip
        return out


def _names(names: list[str]) -> str:
    return ",".join(names) if len(names) <= 4 else f"{len(names)} stores: {names[0]}, {names[1]}, ..., {names[-1]}"


def tag_for(sweep: str, row: str, draw: int) -> str:
    """The tag of a sweep's record: ``sweep:<name> <row> d<k>`` (``featcache results --tag sweep:<name>``)."""
    return f"sweep:{sweep} {row} d{draw}"


def _row_infos(sweep: SweepConfig, reg: Registry) -> tuple[tuple[RowInfo, ...], dict[str, list[list]]]:
    infos, draws = [], {}
    steps: dict[str, CheckpointSpec] = {}
    for row in sweep.rows:
        expanded = [[_with_steps(c, row, sweep.source, steps) for c in reg.expand_checkpoints(d)] for d in row.draws]
        seen: dict[frozenset[str], int] = {}
        for k, specs in enumerate(expanded):
            where = f"{sweep.source}: rows.{row.name}.draws: draw {k} ({row.draws[k]})"
            if len(specs) != len(expanded[0]):
                raise ConfigError(
                    f"{where} has {len(specs)} checkpoint(s), draw 0 ({row.draws[0]}) has {len(expanded[0])}; every "
                    "draw of a row concatenates as many models"
                )
            same = seen.setdefault(frozenset(c.name for c in specs), k)
            if same != k:  # the mean and spread over draws would count it twice
                raise ConfigError(
                    f"{where} concatenates the same checkpoints as draw {same} ({row.draws[same]}); each draw must "
                    "be other checkpoints: remove it or name others"
                )
        n = len(expanded[0])
        total = row.steps_per_model * n if row.steps_per_model else None
        infos.append(RowInfo(row.name, n, len(row.draws), row.steps_per_model, total))
        draws[row.name] = expanded
    return tuple(infos), draws


def _with_steps(c: CheckpointSpec, row: SweepRow, source: str, seen: dict[str, CheckpointSpec]) -> CheckpointSpec:
    """``c`` expecting the row's ``steps_per_model`` (checked against the step the file records when it is loaded).

    Raises:
        ConfigError: the checkpoint is in another row with other steps per model.
    """
    if row.steps_per_model is None:
        return c
    out = dataclasses.replace(c, steps=row.steps_per_model, steps_source=f"{source}: rows.{row.name}.steps_per_model")
    other = seen.setdefault(c.name, out)
    if other.steps != out.steps:
        raise ConfigError(
            f"{out.steps_source} is {out.steps} but checkpoint '{c.name}' is also in {other.steps_source}, which is "
            f"{other.steps}; a checkpoint is trained for one number of steps"
        )
    return out


def _transform(reg: Registry, ds: DatasetSpec, name: str | None, c: CheckpointSpec) -> dict | None:
    """The preprocessing extract would record for ``c``: the architecture's own, unless a preset is named.

    None when this machine cannot tell (timm missing): a machine that only probes needs no backbone library.
    """
    try:
        own = resolve_preprocessing(c.arch) if name is None and c.arch else None
    except ConfigError as e:
        log.debug("%s: preprocessing of %s unknown here (%s); its stores' is not compared", c.name, c.arch, e)
        return None
    return (own or reg.transform(ds, name)).to_dict()


def plan_sweep(sweep: SweepConfig, reg: Registry, paths: Paths) -> SweepPlan:
    """Resolve the sweep against the registry, the cache and the results log; runs nothing.

    Stores extracted otherwise than the sweep asks are planned for extraction with a refusal
    (:func:`check_plan` raises it); their probes stay pending.

    Raises:
        ConfigError: unknown datasets, checkpoints, presets or transforms (named), or draws of one row with
            different numbers of checkpoints or the same checkpoints.
    """
    rows, draws = _row_infos(sweep, reg)
    done: dict[str, ProbeRecord] = {}
    for r in sorted(load_records(paths.results_log), key=lambda r: r.timestamp):  # the newest of equals wins
        done[r.key] = r
    extracts, probes = [], []
    e = sweep.extract
    for d in sweep.datasets:
        where = f"{sweep.source}: datasets.{d.name}"
        ds = reg.dataset(d.name)
        configs = {}
        for row in sweep.rows:
            for k, cs in enumerate(draws[row.name]):
                names = tuple(c.name for c in cs)
                try:  # stores still to extract are planned, not read: their keys come once they exist
                    configs[row.name, k, names] = probe_config.config_from(
                        reg, paths, stores=tuple(store_path(paths.cache, ds.name, n) for n in names), dataset=ds.name,
                        preset=d.preset, views=d.views, epochs=d.epochs, read_stores=False,
                        train_split=ds.train_split, test_split=ds.test_split, tag=tag_for(sweep.name, row.name, k),
                        **dataclasses.asdict(sweep.probe),
                    )  # fmt: skip
                except ConfigError as err:
                    raise ConfigError(f"{where}: preset '{d.preset or reg.preset_for(ds.name)}': {err}") from None
                key = (row.name, k, names)
                configs[key] = with_heads(sweep, reg, paths, ds, row.name, k, configs[key])  # save_heads, eval
        views = next(iter(configs.values())).views  # the views every probe of the dataset trains on
        want = Wanted(views, d.limit, e.views_seed, e.dtype, e.precision, where, f"{sweep.source}: extract",
                      e.preprocess, sweep.fidelity)  # fmt: skip
        specs = list({c.name: c for draw in draws.values() for cs in draw for c in cs}.values())
        ready, todo, reasons, refusals = {}, [], [], []
        for c in specs:
            path = store_path(paths.cache, ds.name, c.name)
            store, why, refusal = store_state(path, c, ds, want, functools.partial(_transform, reg, ds, d.transform, c))
            if store is None:
                todo.append(c)
                reasons.append(why)
                refusals += [refusal] if refusal else []
            else:
                ready[c.name] = store
        if todo:
            try:
                cfg = extract_config.config_from(reg, paths, ckpt=todo, dataset=ds, transform=d.transform, options=e,
                                                 views=views, limit=d.limit)  # fmt: skip
            except ConfigError as err:
                raise ConfigError(f"{sweep.source}: extract: {err}") from None
            extracts.append(ExtractJob(ds.name, cfg, tuple(reasons), tuple(refusals)))
        for (row, k, names), cfg in configs.items():
            key = probe_key_for(cfg, [ready[n] for n in names]) if all(n in ready for n in names) else None
            probes.append(ProbeJob(ds.name, row, k, names, cfg, key))
    transform = functools.partial(_transform, reg)
    extracts += [ExtractJob(*job) for job in eval_extracts(sweep, reg, paths, draws, transform)]
    evaluations = tuple(load_evaluations(paths.results_log))
    checkpoints = tuple({c.path: c for draw in draws.values() for cs in draw for c in cs}.values())
    return SweepPlan(sweep, rows, tuple(extracts), tuple(probes), done, evaluations, checkpoints)


# --- running it ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepResult:
    """What a run did, and the plan as it stands afterwards (every result found), for the report."""

    plan: SweepPlan
    extracted: int  # stores written or completed
    ran: int  # probes run and logged
    skipped: int  # probes found in the log (a concurrent run may log some while this one runs)
    seconds: float

    def summary(self) -> str:
        p = self.plan
        found = sum(p.record(j) is not None for j in p.probes)
        if not self.extracted and not self.ran:
            return (
                f"sweep {p.sweep.name}: nothing to do: every store is extracted and {found}/{len(p.probes)} "
                "probe results are in the results log"
            )
        return (
            f"sweep {p.sweep.name}: extracted {self.extracted} store(s), ran {self.ran} probe(s), "
            f"{self.skipped} already done, in {self.seconds:.0f}s; {found}/{len(p.probes)} results in the log"
        )


def run_sweep(
    sweep: SweepConfig,
    reg: Registry,
    paths: Paths,
    *,
    echo: Callable[[str], None] = log.info,
    progress: ProgressFactory = NullProgress,
    pack: bool = True,
) -> SweepResult:
    """Extract what is missing and probe what is not in the results log, dataset by dataset.

    A dataset's probes that share their batches (every row and draw, unless their options differ) train in one
    pass over the union of their stores (:mod:`featcache.packed`), each getting the record it gets alone; with
    ``pack`` False they run one by one. Each result is echoed, then appended to the log. A probe is claimed before
    it runs and the log is read again under the claim, so two sweeps sharing a log never run one probe twice: a
    probe another sweep holds is left for later, then waited for; a claim whose sweep died is taken over.

    Raises:
        ConfigError: see :func:`plan_sweep`.
        StoreMismatchError, CheckpointError, DatasetError: see :func:`check_plan`; raised before anything runs.
        StoreError, CheckpointError, DatasetError, ProbeError, ResultsError: an extraction, probe or log append
            failed; what finished before is kept, and the same call resumes.
    """
    t0 = time.perf_counter()
    plan = plan_sweep(sweep, reg, paths)
    check_plan(plan)
    todo = plan.pending()
    if not plan.extracts and not todo:
        result = SweepResult(plan, 0, 0, len(plan.probes), time.perf_counter() - t0)
        echo(result.summary())
        return result
    n_ex, n_pr = len(plan.extracts), len(todo)
    echo(
        f"sweep {sweep.name}: {len(sweep.datasets)} dataset(s) x {len(plan.rows)} row(s); {n_ex} extraction(s), "
        f"{n_pr} of {len(plan.probes)} probe(s) to run"
    )
    prober = Prober(paths, echo, n_pr, pack)
    extracted = i_ex = 0

    def run_extract(job: ExtractJob) -> None:
        nonlocal extracted, i_ex
        i_ex += 1
        names = [c.name for c in job.config.checkpoints]
        echo(
            f"[extract {i_ex}/{n_ex}] {job.dataset}: {len(names)} store(s) ({', '.join(sorted(set(job.reasons)))}), "
            f"{job.config.views} view(s)"
        )
        report = extract(job.config, progress)
        extracted += sum(s["status"] != "already complete" for s in report.stores)
        echo(f"[extract {i_ex}/{n_ex}] {job.dataset}: {report.summary()}")

    # the stores heads are scored on (the eval datasets') first: a probe's evaluations follow it at once
    evals = {t.partition("@")[0] for t in sweep.eval}
    early = [e for e in plan.extracts if e.dataset in evals or e.dataset not in {d.name for d in sweep.datasets}]
    for job in early:
        run_extract(job)
    for d in sweep.datasets:
        current = plan
        job = next((e for e in plan.extracts if e.dataset == d.name), None)
        if job is not None:
            if job.dataset not in evals:
                run_extract(job)
            current = plan_sweep(dataclasses.replace(sweep, datasets=(d,)), reg, paths)  # now the keys are known
        prober.run([p for p in current.probes if p.dataset == d.name and p.key not in current.done])
    plan = plan_sweep(sweep, reg, paths)
    found = sum(plan.record(j) is not None for j in plan.probes)
    result = SweepResult(plan, extracted, prober.ran, found - prober.ran, time.perf_counter() - t0)
    echo(result.summary())
    return result
