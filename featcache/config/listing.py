"""``featcache list``: the registries' entries as table rows, broken entries with the reason they do not build."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, unknown_name
from ._layers import Table
from .datasets import IMAGEFOLDER
from .registry import Registry

__all__ = ["KINDS", "registry_rows"]

KINDS = ("checkpoints", "sets", "datasets", "transforms", "presets")  # `archs` comes from featcache.models


def _rows(table: Table, row: Callable[[str, Any], dict]) -> list[dict]:
    broken = table.problems()
    return [{"name": n, "problem": broken[n]} if n in broken else row(n, table.get(n)) for n in table.names()]


def _checkpoint(name: str, c: Any) -> dict:
    return {"name": name, "arch": c.arch, "ema": c.ema, "file": "present" if c.path.is_file() else "missing",
            "path": str(c.path)}  # fmt: skip


def _transform(name: str, t: Any) -> dict:
    return {**t.to_dict(), "views": t.augment is not None}  # views: a train transform that `--views` can use


def _preset(name: str, p: Any) -> dict:
    return {"name": name, **{k: v for k, v in p.to_dict().items() if v is not None}}


def _datasets(reg: Registry) -> list[dict]:
    out = []
    for name in reg.dataset_tables.datasets.names():
        try:
            d = reg.dataset(name)
        except ConfigError as e:  # a broken entry is listed with its reason, like those of the other kinds
            out.append({"name": name, "problem": str(e)})
            continue
        out.append({"name": name, "format": d.format, "splits": list(d.splits), "train": d.train_split,
                    "test": d.test_split, "transforms": list(d.transforms), "preset": d.probe,
                    "root": str(d.root)})  # fmt: skip
    template = reg.dataset_tables.template
    if template:
        out.append({"name": f"{IMAGEFOLDER}<path>", "format": template.get("format"), "splits": "train,val,test or all",
                    "train": template.get("train_split"), "test": template.get("test_split"),
                    "transforms": list(template.get("transforms") or ()), "preset": reg.preset_for(IMAGEFOLDER),
                    "root": "<path> (a bare name: under --data-dir)"})  # fmt: skip
    return out


def registry_rows(reg: Registry, kind: str) -> list[dict]:
    """One row per entry of ``kind`` (one of :data:`KINDS`), in registry order; a broken entry is a row with its
    name and ``problem``.

    Raises:
        ConfigError: a registry file cannot be read, or ``kind`` is not one of :data:`KINDS`.
    """
    tables = {
        "checkpoints": lambda: _rows(reg.checkpoint_tables.ckpts, _checkpoint),
        "sets": lambda: _rows(reg.checkpoint_tables.sets, lambda n, members: {"name": n, "checkpoints": list(members)}),
        "datasets": lambda: _datasets(reg),
        "transforms": lambda: _rows(reg.dataset_tables.transforms, _transform),
        "presets": lambda: _rows(reg.preset_table.table, _preset),
    }
    if kind not in tables:
        raise unknown_name("registry", kind, KINDS)
    return tables[kind]()
