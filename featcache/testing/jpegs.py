"""An ImageFolder of distinct JPEG photos of varied sizes and both chroma layouts, as users' datasets are.

Each file is its own image (a random smooth pattern plus pixel noise, about 90 KB at 500x375 and quality 90, like
a photo of that size), its width and height drawn apart from each other, half of the files 4:2:0 and half 4:4:4.
Written once into a folder and reused: ``complete.json`` records what the folder holds, and a call asking for
the same files returns at once. The benchmarks write 16,000 or more; the tests a few dozen small ones.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_varied_jpegs"]

_FILES_PER_TASK = 250  # each task seeded by (seed, task): the files do not depend on the number of processes
_NOISE = 10.0  # pixel noise (standard deviation, levels): sets the file size (about 90 KB at 500x375)


def write_varied_jpegs(
    root: Path,
    n: int,
    *,
    sides: tuple[int, int] = (300, 640),
    classes: int = 10,
    seed: int = 0,
    processes: int | None = None,
) -> Path:
    """``root/val/class<c>/img_<i>.jpg``: ``n`` distinct JPEGs, each side drawn in ``sides``, 4:2:0 and 4:4:4.

    Args:
        root: the dataset folder (an ImageFolder root with the split ``val``).
        n: how many files.
        sides: the smallest and largest width and height, in pixels.
        classes: class folders, filled round-robin.
        seed: the files are a function of (seed, sides, n).
        processes: encoding processes (default: the CPU count); the files do not depend on it.

    Returns:
        ``root``. A folder whose ``complete.json`` records the same arguments is reused as it is.
    """
    root = Path(root)
    want = {"n": n, "sides": list(sides), "classes": classes, "seed": seed, "version": 1}
    done = root / "complete.json"
    if done.is_file() and json.loads(done.read_text()) == want:
        return root
    tasks = [(root, seed, t, range(t * _FILES_PER_TASK, min(n, (t + 1) * _FILES_PER_TASK)), sides, classes)
             for t in range(-(-n // _FILES_PER_TASK))]  # fmt: skip
    processes = min(processes or os.cpu_count() or 1, len(tasks)) or 1
    if processes > 1:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.starmap(_write_task, tasks)
    else:
        for task in tasks:
            _write_task(*task)
    done.write_text(json.dumps(want))
    return root


def _write_task(root: Path, seed: int, task: int, rows: range, sides: tuple[int, int], classes: int) -> None:
    rng = np.random.default_rng([seed, task])
    noise = rng.normal(0, _NOISE, (2 * sides[1], 2 * sides[1], 3)).astype(np.int16)  # windows of it per image
    for i in rows:
        w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
        base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
        top, left = (int(v) for v in rng.integers(0, sides[1], 2))
        pixels = np.asarray(base, dtype=np.int16) + noise[top : top + h, left : left + w]
        folder = root / "val" / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        # subsampling 2 is 4:2:0, 0 is 4:4:4; written to a temporary name, then renamed: a killed run leaves no
        # half file under a final name
        tmp = folder / f".img_{i:06d}.jpg.tmp"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            tmp, format="JPEG", quality=90, subsampling=2 if i % 2 == 0 else 0
        )
        os.replace(tmp, folder / f"img_{i:06d}.jpg")
