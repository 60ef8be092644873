"""``--solver sgd`` (the default): the grid of SGD heads (:class:`featcache.heads.MultiHeadProbe`) as a :class:`Solver`.

1. Select pass: every point of the grid (weight decays, optionally x learning rates) is a head of one
   :class:`MultiHeadProbe`, trained on the fit rows and scored on val after each epoch. The (head, epoch) with the
   best val top-1 is selected (ties: the later epoch, then the earlier head).
2. Final pass: the same grid retrained on the whole train split, scored on test after each epoch. The reported test
   accuracy is the selected head's at the selected epoch: test never chose it. That head is kept as it is when the
   epoch ends (the result's ``head``, what ``--save-head`` writes). This pass also gives the research-style number
   (best test accuracy over epochs and grid), selected on test and labelled so.

Packed (:meth:`SgdSolver.fit_select_packed`): several probes whose features are column groups of one feature matrix
(:mod:`featcache.packed`) run both passes together (:class:`featcache.heads.PackedProbe`), each selected as alone
and keeping its selected head as alone (so a packed probe saves and evaluates its head as a probe alone does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ..errors import ProbeError
from ..heads import HeadConfig, MultiHeadProbe, NonFiniteLossError, PackedProbe
from ..linear_head import LinearHead
from ..results_record import GridPoint, ResearchNumber, Selection
from ._base import SolverResult, Splits

__all__ = ["RESEARCH_NOTE", "SELECTION_NOTE", "SgdSolver"]

SELECTION_NOTE = (
    "selected on a held-out val split of train (head and epoch); the grid is then retrained on the full train "
    "split and test is read once, at the selected head and epoch"
)
RESEARCH_NOTE = "research-style: best test accuracy over all epochs and grid points (selected on test)"


class SgdSolver:
    """The select pass (fit -> val) and the final pass (train -> test) of the SGD grid (see the module docstring).

    Args:
        heads: the heads' hyperparameters; their grid is the solver's.
    """

    name = "sgd"

    def __init__(self, heads: HeadConfig):
        self.heads = heads

    def fit_select(self, splits: Splits, n_features: int, n_classes: int, device: torch.device) -> SolverResult:
        """Raises:
        ProbeError: a head's training loss became non-finite (names the grid point and the stores).
        """
        select = self._fit(splits, "fit", "val", n_features, n_classes, device)
        at = _select(select.history_, "val_top1")  # (head, epoch), as the record reports them
        kept: list[LinearHead] = []

        def keep(probe: MultiHeadProbe, epoch: int) -> None:
            # the selected head as it scored test at the selected epoch: the head a saved head holds
            if epoch == at[1]:
                kept.append(probe.scoring_heads(blocks=True)[at[0]])

        final = self._fit(splits, "train", "test", n_features, n_classes, device, keep)
        grid, selected, research = _results(self.heads, select, final, n_classes)
        timings = {"select_s": select.seconds_, "final_s": final.seconds_}
        return SolverResult(grid, selected, research, dataclasses.asdict(self.heads), timings, head=kept[0])

    def fit_select_packed(
        self, splits: Splits, groups: Sequence[Sequence[int]], n_features: int, n_classes: int, device: torch.device
    ) -> list[SolverResult]:
        """Both passes of several probes in one: group g (its columns of the splits' features) is selected as
        :meth:`fit_select` selects it alone on ``X[:, groups[g]]``, and keeps its selected head as that does.

        Raises:
            NonFiniteLossError: a head's training loss became non-finite (names the group).
        """
        X, y = splits.training("fit")
        select = PackedProbe(self.heads, n_features, n_classes, groups, device=device)
        select.fit(X, y, eval_sets={"val": splits["val"]})
        at = [_select(p.history_, "val_top1") for p in select.probes_]  # each group's (head, epoch)
        kept: list[LinearHead | None] = [None] * len(groups)

        def keep(packed: PackedProbe, epoch: int) -> None:
            # each group's selected head as it scored test at its selected epoch, as fit_select keeps it alone
            for g, (h, e) in enumerate(at):
                if e == epoch:
                    kept[g] = packed.scoring_heads(g, blocks=True)[h]

        X, y = splits.training("train")
        final = PackedProbe(self.heads, n_features, n_classes, groups, device=device)
        final.fit(X, y, eval_sets={"test": splits["test"]}, on_epoch=keep)
        out = []
        for s, f, head in zip(select.probes_, final.probes_, kept, strict=True):
            grid, selected, research = _results(self.heads, s, f, n_classes)
            timings = {"select_s": select.seconds_, "final_s": final.seconds_}
            out.append(SolverResult(grid, selected, research, dataclasses.asdict(self.heads), timings, head=head))
        return out

    def _fit(self, splits: Splits, train: str, evaluate: str, n_features, n_classes, device, on_epoch=None):
        probe = MultiHeadProbe(self.heads, n_features, n_classes, device=device)
        try:
            X, y = splits.training(train)  # streamed: block-shuffled, see featcache.feed
            return probe.fit(X, y, eval_sets={evaluate: splits[evaluate]}, on_epoch=on_epoch)
        except NonFiniteLossError as e:
            grid = self.heads.grid
            which = ", ".join(f"lr={grid[h][0]:g} wd={grid[h][1]:g}" for h in e.heads)
            raise ProbeError(
                f"training loss of head(s) {which} became non-finite at epoch {e.epoch} on stores "
                f"{splits.sources}: check them with `featcache verify`, or lower --lr"
            ) from None


def _select(history: list[dict], key: str, heads: Sequence[int] | None = None) -> tuple[int, int]:
    """(head, 1-based epoch) with the best ``key`` accuracy among ``heads`` (default all).

    Ties go to the later epoch (the full schedule), then to the earlier head (smaller weight decay).
    """
    heads = range(len(history[0][key])) if heads is None else heads
    acc, epoch, neg_head = max((rec[key][h], e, -h) for e, rec in enumerate(history, 1) for h in heads)
    return -neg_head, epoch


def _results(cfg: HeadConfig, select: MultiHeadProbe, final: MultiHeadProbe, n_classes: int):
    """(grid points, selection, research number) from the select and final passes' histories."""
    grid = cfg.grid
    lr_grid = cfg.lrs is not None

    def params(h: int) -> dict[str, float]:
        lr, wd = grid[h]
        return {"lr": lr, "weight_decay": wd} if lr_grid else {"weight_decay": wd}

    def top5(e: int, h: int) -> float | None:
        return final.history_[e - 1]["test_top5"][h] if n_classes >= 6 else None

    heads = []
    for h in range(len(grid)):
        _, eh = _select(select.history_, "val_top1", heads=[h])
        heads.append(
            GridPoint(
                params=params(h),
                val_top1=select.history_[eh - 1]["val_top1"][h],
                val_epoch=eh,
                test_top1=final.history_[eh - 1]["test_top1"][h],
                test_top5=top5(eh, h),
                best_test_top1=max(r["test_top1"][h] for r in final.history_),
            )
        )
    h, e = _select(select.history_, "val_top1")
    rh, re_ = _select(final.history_, "test_top1")
    selected = Selection(
        params=params(h),
        epoch=e,
        val_top1=select.history_[e - 1]["val_top1"][h],
        test_top1=final.history_[e - 1]["test_top1"][h],
        test_top5=top5(e, h),
        method=SELECTION_NOTE,
    )
    research = ResearchNumber(final.history_[re_ - 1]["test_top1"][rh], params(rh), re_, RESEARCH_NOTE)
    return tuple(heads), selected, research
