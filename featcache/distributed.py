"""Extraction across processes, GPUs and nodes on torch.distributed: each rank is a shard of every store.

Under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/MASTER_PORT) or ``srun`` (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID, with MASTER_ADDR and MASTER_PORT exported by the batch script), ``featcache
extract`` joins a process group (nccl on GPUs, gloo on CPUs). Rank r of N writes the chunks i with
i % N == r, whole chunks only (never two writers in one chunk), under its own shard lock; ranks exchange no
features, only barriers. The store and its splits are created under the store's lock by whichever rank comes
first; after a split's barrier rank 0 marks it complete, once every rank's chunks are written and checked.
A killed rank loses at most the chunks it was writing: rerunning the same command finishes the store, byte
for byte the store one process writes (CPU, fp32), because every chunk is computed from the same batches.

Launchers with no communication between tasks (Slurm job arrays) use ``extract --shard I/N`` instead: the
same chunk ownership and locks, and the last task to finish completes the store.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["World", "from_env", "group"]

TIMEOUT = datetime.timedelta(hours=48)  # a barrier waits for the slowest rank's whole split


@dataclass(frozen=True)
class World:
    """This process's place in the group."""

    rank: int
    size: int
    local_rank: int

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.size

    def barrier(self) -> None:
        torch.distributed.barrier()

    def total(self, *counts: int, device: torch.device) -> tuple[int, ...]:
        """Sums of ``counts`` over the group (on ``device``: nccl reduces CUDA tensors only)."""
        t = torch.tensor(counts, dtype=torch.int64, device=device)
        torch.distributed.all_reduce(t)
        return tuple(int(v) for v in t.tolist())


def from_env(environ: dict[str, str] | None = None) -> World | None:
    """The group the launcher set up for this process (torchrun's or Slurm's variables), or None when alone."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, size, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and "MASTER_ADDR" in env:  # srun without torchrun
        rank, size, local = int(env["SLURM_PROCID"]), int(env.get("SLURM_NTASKS", 1)), int(env.get("SLURM_LOCALID", 0))
    else:
        return None
    return World(rank, size, local) if size > 1 else None


def local_device(device: torch.device) -> torch.device:
    """Under a group, a CUDA device without an index is this rank's local GPU."""
    world = from_env()
    if world is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank)
    return device


@contextlib.contextmanager
def group(device: torch.device) -> Iterator[World | None]:
    """Join the launcher's process group for the body (nccl on CUDA, gloo otherwise); None when alone."""
    world = from_env()
    if world is None:
        yield None
        return
    dist = torch.distributed
    joined = not dist.is_initialized()
    if joined:
        os.environ.setdefault("RANK", str(world.rank))  # srun: env:// reads these
        os.environ.setdefault("WORLD_SIZE", str(world.size))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield world
    finally:
        if joined:
            dist.destroy_process_group()
