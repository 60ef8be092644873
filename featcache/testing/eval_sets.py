"""Write tiny evaluation sets in their real layouts: an ImageNet shifted test set and Camelyon17-WILDS.

- :func:`write_shifted_folder`: one folder per class (wnids, or ImageNet-V2's class indices), a few small images each;
- :func:`write_camelyon17`: WILDS' ``camelyon17_v1.0`` tree, ``metadata.csv`` and 96x96 PNG patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .formats import save_image, smooth_images

__all__ = ["CAMELYON_HEADER", "camelyon17_rows", "write_camelyon17", "write_shifted_folder"]

# WILDS' metadata.csv header: an unnamed index column first (pandas' index_col=0)
CAMELYON_HEADER = ",patient,node,x_coord,y_coord,tumor,slide,center,split"


def write_shifted_folder(
    root: Path, folders: Sequence[str], per_class: int | Sequence[int] = 1, size: int = 12, seed: int = 0
) -> dict[str, list[str]]:
    """``root/<folder>/<image>`` for each of ``folders`` (wnids, or ``0``..``999``), plus a README.txt at the top.

    Args:
        per_class: images per folder, or one count per folder; JPEG and PNG alternate.

    Returns:
        folder -> its image ids (paths relative to ``root``), sorted.
    """
    rng = np.random.default_rng(seed)
    counts = [per_class] * len(folders) if isinstance(per_class, int) else list(per_class)
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / "README.txt").write_text("not a class folder\n")
    out = {}
    for folder, n in zip(folders, counts, strict=True):
        (Path(root) / folder).mkdir(parents=True, exist_ok=True)
        names = [f"{folder}_{i:02d}{'.jpg' if i % 2 else '.png'}" for i in range(n)]
        for name in names:
            save_image(smooth_images(rng, 1, size, size + 3)[0], "RGB", Path(root) / folder / name)
        out[folder] = sorted(f"{folder}/{name}" for name in names)
    return out


def camelyon17_rows(per_center: int = 3, seed: int = 0) -> list[dict[str, int | str]]:
    """Metadata rows over WILDS' 5 hospitals (two slides each), shuffled as the real file mixes them.

    Hospitals 0, 3 and 4 split their patches between split 0 (train) and 1 (id_val); hospitals 1 and 2 carry split 0,
    which WILDS overrides (OOD val and test). One patch of slide 23 (hospital 2) lets scheme ``in-dist`` move it.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for center in range(5):
        for k in range(per_center):
            slide = 23 if (center == 2 and k == 0) else 10 * center + k % 2
            patient = f"{4 * center + k % 2:03d}"  # zero-padded, as WILDS reads it (a string)
            x, y = (int(v) for v in rng.integers(100, 9000, 2))
            id_val = int(center in (0, 3, 4) and k % 3 == 2)
            tumor = int((k + center) % 2)
            rows.append({"patient": patient, "node": k % 2 + 1, "x_coord": x, "y_coord": y, "tumor": tumor,
                         "slide": slide, "center": center, "split": id_val})  # fmt: skip
    return [rows[i] for i in rng.permutation(len(rows))]


def write_camelyon17(root: Path, rows: Sequence[dict] | None = None, seed: int = 0) -> Path:
    """``root/metadata.csv`` in WILDS' layout and a 96x96 PNG patch for each row under ``root/patches/``.

    Args:
        rows: metadata rows (:func:`camelyon17_rows` by default), written in order with indices 0, 1, ...

    Returns:
        ``root`` (what WILDS calls ``camelyon17_v1.0``).
    """
    rng = np.random.default_rng(seed)
    rows = camelyon17_rows(seed=seed) if rows is None else rows
    root = Path(root)
    lines = [CAMELYON_HEADER]
    for i, r in enumerate(rows):
        p, n, x, y = r["patient"], r["node"], r["x_coord"], r["y_coord"]
        lines.append(f"{i},{p},{n},{x},{y},{r['tumor']},{r['slide']},{r['center']},{r['split']}")
        path = root / "patches" / f"patient_{p}_node_{n}" / f"patch_patient_{p}_node_{n}_x_{x}_y_{y}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(smooth_images(rng, 1, 96, 96)[0], "RGB", path)
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root
