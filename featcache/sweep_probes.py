"""The probe step of ``featcache sweep``: a dataset's pending probes, each run once under its claim.

:class:`Prober` numbers the probes as it takes them up, skips those already logged (read under the claim) or held by
another sweep (waited for at the end), packs those that share their batches (:func:`featcache.packed.run_packed`)
and logs each record after printing it, then the evaluations of its saved head (:mod:`featcache.evaluate`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import Paths
from .errors import StoreError
from .evaluate import probe_and_evaluate
from .packed import plan_packs, run_packed
from .probe import ProbeConfig, run_probe
from .results import EvaluationRecord, ProbeRecord, append_record, claim, holder, load_records

if TYPE_CHECKING:
    from .sweep import ProbeJob

__all__ = ["Prober", "research_text"]

log = logging.getLogger(__name__)


def research_text(record: ProbeRecord) -> str:
    """``, research 91.20``: the record's research number (best test, selected on test), when it has one."""
    return f", research {record.research.test_top1:.2f}" if record.research is not None else ""


def _logged(paths: Paths) -> set[str]:
    return {r.key for r in load_records(paths.results_log)}


@dataclass
class Prober:
    """Runs a dataset's pending probes, each under its claim, numbering them as they are taken up; packed
    (:func:`featcache.packed.run_packed`: the probes that share their batches trained in one pass) unless ``pack``
    is False."""

    paths: Paths
    echo: Callable[[str], None]
    total: int
    pack: bool = True
    taken: int = 0
    ran: int = 0

    def run(self, jobs: list[ProbeJob]) -> None:
        """Every job; those another sweep holds are waited for after the others."""
        if self.pack:
            held = [p for pack in plan_packs([j.config for j in jobs]) for p in self._pack([jobs[i] for i in pack])]
        else:
            held = [p for p in jobs if not self._one(p, wait=False)]
        for p in held:
            self.echo(f"[probe] {p.dataset} {p.row} d{p.draw}: waiting for the other sweep to finish it")
            self._one(p, wait=True)

    def _one(self, p: ProbeJob, wait: bool) -> bool:
        """Run ``p`` unless it is logged; False (at once) when another sweep holds it and not ``wait``."""
        with claim(self.paths.results_log, _key(p), wait=wait) as mine:
            head = self._take(p, mine)
            if head is not None:
                self._log(p, head, _alone(p.config))
        return mine

    def _pack(self, jobs: list[ProbeJob]) -> list[ProbeJob]:
        """Run the jobs this sweep can claim in one pass; returns those another sweep holds."""
        held, todo = [], []
        with contextlib.ExitStack() as claims:  # every claim held until the pack's records are logged
            for p in jobs:
                mine = claims.enter_context(claim(self.paths.results_log, _key(p), wait=False))
                head = self._take(p, mine)
                if not mine:
                    held.append(p)
                elif head is not None:
                    todo.append((p, head))
            if len(todo) > 1:  # a pack: each probe's record, then the evaluations of its head
                jobs_left, line = iter(todo), ""
                for record in run_packed([p.config for p, _ in todo]):
                    if isinstance(record, ProbeRecord):
                        job, line = next(jobs_left)
                        self._log_record(job, line, record)
                    else:
                        self._log_evaluation(line, record)
            else:
                for p, head in todo:
                    self._log(p, head, _alone(p.config))
        return held

    def _take(self, p: ProbeJob, mine: bool) -> str | None:
        """The progress line's head for a claimed probe still to run; None when not ``mine`` or already logged
        (both said)."""
        if not mine:
            who = holder(self.paths.results_log, p.key) or "another process"
            self.echo(f"[probe] {p.dataset} {p.row} d{p.draw}: another sweep is running it ({who}); later")
            return None
        self.taken += 1
        head = f"[probe {self.taken}/{self.total}] {p.dataset} {p.row} d{p.draw}"
        if p.key in _logged(self.paths):  # read under the claim: logged by its last holder, or meanwhile
            self.echo(f"{head}: already in the results log")
            return None
        return head

    def _log(self, p: ProbeJob, head: str, records: Iterator[ProbeRecord | EvaluationRecord]) -> None:
        """Log the probe's record, then each evaluation of its head that follows it in ``records``."""
        self._log_record(p, head, next(records))
        for ev in records:
            self._log_evaluation(head, ev)

    def _log_record(self, p: ProbeJob, head: str, record: ProbeRecord) -> None:
        """Print, then log, the probe's record."""
        if record.key != p.key:  # the predicted key must be the logged one, or reruns would probe again
            log.warning("%s: record key %s differs from the predicted %s", head, record.key, p.key)
        self.echo(
            f"{head} ({len(p.stores)} model(s), {record.feature_dim} features): test top-1 "
            f"{record.selected.test_top1:.2f} (val {record.selected.val_top1:.2f}){research_text(record)} in "
            f"{record.timings.get('total_s', 0):.1f}s, result {record.id}"
        )
        append_record(self.paths.results_log, record)  # after the echo: a failed append loses nothing seen
        self.ran += 1

    def _log_evaluation(self, head: str, ev: EvaluationRecord) -> None:
        """Print, then log, an evaluation of the probe's head (the progress line ``head`` names the probe)."""
        blocks = " ".join(f"{b.top1:.2f}" for b in ev.per_model)
        self.echo(f"{head}: head on {ev.dataset} '{ev.split}': top-1 {ev.top1:.2f}"
                  + (f", per model {blocks}" if blocks else "") + f", result {ev.id}")  # fmt: skip
        append_record(self.paths.results_log, ev)


def _alone(cfg: ProbeConfig) -> Iterator[ProbeRecord | EvaluationRecord]:
    """A probe run alone: its record, then with evaluations each of them."""
    return probe_and_evaluate(cfg) if cfg.evaluate else iter([run_probe(cfg)])


def _key(p: ProbeJob) -> str:
    if p.key is None:  # extraction reported success, yet a store is not ready: never probe a partial store
        raise StoreError(
            f"stores {', '.join(p.stores)} of {p.dataset} are not complete after extraction; "
            "run `featcache ls` and `featcache verify` on them"
        )
    return p.key
