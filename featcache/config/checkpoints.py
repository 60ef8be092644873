"""The checkpoint registry: ``checkpoints.yaml`` and ``checkpoints.d/*.yaml`` in two dialects, and ``--ckpt``.

The native dialect::

    checkpoints:
      run0: {arch: resnet50, path: relative/to/the/checkpoint/dir.pth.tar, ema: false}
    sets:
      full: [run0, run1, ...]

The research dialect, ``tag: {arch: a or [a, ...], pretrained: p or [p, ...], ...}``: each tag becomes a set
whose members are ``<tag>-run<i>``; its other keys are training flags the research code copied onto argparse and
are ignored here. Checkpoint and set names share one namespace.

A checkpoint dir that holds ``configs/pretrained_checkpoints.yaml`` is the research repository's root (richreps-timecat,
after its ``tools/download.sh``): that file is read as it is, as the last layer, its paths relative to the root as
the research code reads them; the files live under the root's ``checkpoints/``, which is then the dir every other
entry is relative to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, unknown_name
from ..records import Record
from ._layers import Entry, Table, raiser, read_yaml
from .paths import resolve_under
from .specs import CheckpointSpec

__all__ = ["CHECKPOINT_SUFFIXES", "RESEARCH_REGISTRY", "CheckpointTables", "checkpoint_root", "file_names"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt", ".safetensors")
# The research repository's registry and checkpoint folder, relative to its root (its supervised.py opens the
# registry by that relative path; tools/download.sh unpacks under checkpoints/supervised_pretrain/).
RESEARCH_REGISTRY = Path("configs") / "pretrained_checkpoints.yaml"
RESEARCH_CHECKPOINTS = "checkpoints"


def checkpoint_root(checkpoint_dir: Path) -> Path:
    """The dir registry paths are relative to: ``checkpoint_dir``, or its ``checkpoints/`` when it is the research
    repository's root (it holds :data:`RESEARCH_REGISTRY`)."""
    if (checkpoint_dir / RESEARCH_REGISTRY).is_file():
        return checkpoint_dir / RESEARCH_CHECKPOINTS
    return checkpoint_dir


@dataclass(frozen=True)
class _Native(Record):
    """A checkpoint entry of the native dialect."""

    arch: str
    path: str
    ema: bool = False


@dataclass(frozen=True)
class _Research(Record):
    """The two keys of a research-dialect entry that featcache reads (one value or a list each)."""

    pretrained: tuple[str, ...] = field(metadata={"min_items": 1})
    arch: tuple[str, ...] = field(metadata={"min_items": 1})


class CheckpointTables:
    """The checkpoints and sets of every layer (``files``: (layer, path) in layer order)."""

    def __init__(self, files: list[tuple[int, Path]], checkpoint_dir: Path):
        self.root = checkpoint_root(checkpoint_dir)
        self.ckpts, self.sets = Table("checkpoint"), Table("set")
        for layer, path in files:
            doc = read_yaml(path)
            if "checkpoints" in doc or "sets" in doc:
                self._add_native(doc, path, layer)
            else:
                self._add_research(doc, path, layer, self.root)
        if self.root != checkpoint_dir:  # a research repository's root: its registry, paths relative to the root
            last = max((k for k, _ in files), default=-1) + 1
            research = checkpoint_dir / RESEARCH_REGISTRY
            self._add_research(read_yaml(research), research, last, checkpoint_dir)

    def _checkpoint(self, name: str, doc: Any, where: str, root: Path | None = None) -> Entry:
        def build() -> CheckpointSpec:
            e = _Native.from_dict(doc, where, strict=True)
            path = resolve_under(root or self.root, e.path, f"{where}: path")
            return CheckpointSpec(name, e.arch, path, e.ema, "registry" if e.ema else None)

        return Entry(where, build)

    def _set(self, name: str, members: Any, where: str) -> Entry:
        def build() -> tuple[str, ...]:
            if not isinstance(members, list) or not members:
                raise ConfigError(f"{where} must be a non-empty list of checkpoint names")
            for m in members:
                if str(m) not in self.ckpts:
                    raise unknown_name("checkpoint", str(m), self.ckpts.names(), f"listed in set '{name}' ({where})")
            return tuple(str(m) for m in members)

        return Entry(where, build)

    def _add_native(self, doc: dict, path: Path, layer: int) -> None:
        for name, entry in (doc.get("checkpoints") or {}).items():
            self.ckpts.add(str(name), layer, self._checkpoint(str(name), entry, f"{path}: checkpoints.{name}"),
                           (self.sets,))  # fmt: skip
        for name, members in (doc.get("sets") or {}).items():
            self.sets.add(str(name), layer, self._set(str(name), members, f"{path}: sets.{name}"), (self.ckpts,))

    def _add_research(self, doc: dict, path: Path, layer: int, root: Path) -> None:
        for tag, entry in doc.items():
            where = f"{path}: {tag}"
            read = {k: entry[k] for k in ("pretrained", "arch") if k in entry} if isinstance(entry, dict) else entry
            try:
                e = _Research.from_dict(read, where, strict=True)
            except ConfigError as err:
                self.sets.add(str(tag), layer, Entry(where, raiser(str(err))), (self.ckpts,))
                continue
            archs = e.arch * len(e.pretrained) if isinstance(entry["arch"], str) else e.arch
            if len(archs) != len(e.pretrained):
                why = f"{where}: 'arch' has {len(archs)} entries but 'pretrained' has {len(e.pretrained)}"
                self.sets.add(str(tag), layer, Entry(where, raiser(why)), (self.ckpts,))
                continue
            members = [f"{tag}-run{i}" for i in range(len(e.pretrained))]
            for m, a, p in zip(members, archs, e.pretrained, strict=True):
                self.ckpts.add(m, layer, self._checkpoint(m, {"arch": a, "path": p}, where, root), (self.sets,))
            self.sets.add(str(tag), layer, self._set(str(tag), members, where), (self.ckpts,))

    def checkpoint(self, name: str) -> CheckpointSpec:
        """The registered checkpoint ``name``.

        Raises:
            ConfigError: unknown name (closest names suggested), or its entry is broken (says which file and why).
        """
        if name not in self.ckpts:
            raise unknown_name("checkpoint", name, self.ckpts.names() + self.sets.names())
        return self.ckpts.get(name)

    def expand(self, spec: str, arch: str | None = None) -> list[CheckpointSpec]:
        """Resolve ``--ckpt``: a name, a set, a comma-separated mix, or file paths (which need ``arch``).

        Two files with the same stem in different folders get names that tell them apart
        (``a-model``, ``b-model``): none is ever dropped.

        Raises:
            ConfigError: unknown name (closest names suggested), a broken entry, or a file path given
                without ``arch``.
        """
        out: list[CheckpointSpec] = []
        files: list[Path] = []
        for token in (t.strip() for t in spec.split(",")):
            if not token:
                continue
            if token in self.sets:
                specs = [self.ckpts.get(m) for m in self.sets.get(token)]
            elif token in self.ckpts:
                specs = [self.ckpts.get(token)]
            elif os.sep in token or token.endswith(CHECKPOINT_SUFFIXES) or Path(token).is_file():
                if arch is None:
                    raise ConfigError(f"--ckpt '{token}' is a file path: pass --arch to say what network it holds")
                p = Path(token)
                if not p.is_file():
                    raise ConfigError(f"--ckpt file '{token}' not found")
                if p.resolve() not in files:
                    files.append(p.resolve())
                continue
            else:
                known = self.ckpts.names() + self.sets.names()
                raise unknown_name("checkpoint", token, known, "or give a file path with --arch")
            for s in specs:
                if arch is not None and s.arch is not None and s.arch != arch:
                    raise ConfigError(
                        f"--arch {arch} contradicts the registry, which says '{s.name}' is {s.arch}; drop --arch"
                    )
                if s not in out:
                    out.append(s)
        out += [CheckpointSpec(name, arch, p) for name, p in zip(file_names(files), files, strict=True)]
        if not out:
            raise ConfigError("--ckpt is empty; give a checkpoint name, set name or file path")
        return out


def file_names(files: list[Path]) -> list[str]:
    """Store names for checkpoint files: the stem, prefixed by as many parent folders as tell equal stems apart."""

    def name(f: Path, depth: int) -> str:
        parents = f.parent.parts[len(f.parent.parts) - depth :] if depth else ()
        return "-".join([p.strip("/") for p in parents if p.strip("/")] + [f.name.split(".")[0]])

    out = []
    for f in files:
        depth = 0
        while depth < len(f.parent.parts) and any(name(g, depth) == name(f, depth) for g in files if g != f):
            depth += 1
        out.append(name(f, depth))
    return out
