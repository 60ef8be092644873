"""Write tiny datasets in their real on-disk formats: CIFAR pickles, ImageFolder, iNat JSON, truncated JPEGs.

Content is smooth seeded noise (a few random pixels upscaled bilinearly) unless a caller brings its own images,
so it is deterministic and behaves like a photo under resizing. Each writer returns what a test needs to check
the reader. The test suite and the benchmarks share these writers.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "CIFAR10_CLASSES",
    "FOLDER_KINDS",
    "jpeg_bytes",
    "save_image",
    "smooth_images",
    "write_cifar10",
    "write_cifar10_arrays",
    "write_cifar100",
    "write_imagefolder",
    "write_inat",
    "write_random_cifar10",
    "write_truncated_jpeg",
]

# (PIL mode, extension) cycled through the ImageFolder fixture; the upper-case one checks extension matching.
FOLDER_KINDS = (
    ("RGB", ".jpg"),
    ("L", ".png"),
    ("RGBA", ".png"),
    ("P", ".png"),
    ("CMYK", ".jpg"),
    ("RGB", ".PNG"),
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

Images = tuple[np.ndarray, Sequence[int]]  # uint8 (N, 32, 32, 3) RGB images and their labels


def smooth_images(rng: np.random.Generator, n: int, height: int, width: int, grid: int = 4) -> np.ndarray:
    """``n`` smooth uint8 RGB images (n, height, width, 3): random ``grid`` x ``grid`` pixels upscaled."""
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (grid, grid, 3), dtype=np.uint8))
        out[i] = np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))
    return out


def _cifar_entry(images: np.ndarray, labels: Sequence[int], start: int, label_keys: tuple[str, ...]) -> dict:
    """One CIFAR batch dict: planar uint8 rows, filenames ``img_<start + i>.png``, the labels under each key."""
    n = len(images)
    entry = {
        "batch_label": "fixture",
        "data": np.asarray(images).transpose(0, 3, 1, 2).reshape(n, 3072).copy(),  # planar R, G, B
        "filenames": [f"img_{start + i:05d}.png" for i in range(n)],
    }
    for k in label_keys:
        entry[k] = [int(v) for v in labels]
    return entry


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10_arrays(
    root: Path, train: Sequence[Images], test: Images, classes: Sequence[str] = CIFAR10_CLASSES
) -> Path:
    """``root/cifar-10-batches-py``: the five train batches ``train``, ``test_batch`` and ``batches.meta``.

    Returns:
        The folder written.

    Raises:
        ValueError: ``train`` is not five batches (the format's file list).
    """
    if len(train) != 5:
        raise ValueError(f"CIFAR-10 has 5 train batches, got {len(train)}")
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for b, (images, labels) in enumerate(train):
        _dump(folder / f"data_batch_{b + 1}", _cifar_entry(images, labels, start, ("labels",)))
        start += len(images)
    _dump(folder / "test_batch", _cifar_entry(*test, 0, ("labels",)))
    meta = {"label_names": list(classes), "num_cases_per_batch": len(train[0][0]), "num_vis": 3072}
    _dump(folder / "batches.meta", meta)
    return folder


def write_random_cifar10(
    root: Path,
    n_train: int,
    n_test: int,
    seed: int = 0,
    images: Callable[[np.random.Generator, int, int, int], np.ndarray] = smooth_images,
    classes: Sequence[str] = CIFAR10_CLASSES,
) -> tuple[list[Images], Images]:
    """CIFAR-10 pickles of ``n_train`` images spread over the 5 train batches and ``n_test`` test images.

    Each batch draws its images (``images(rng, n, 32, 32)``), then its labels uniformly.

    Returns:
        The train batches and the test batch written, as (images, labels).
    """
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(6):
        m = n_train // 5 + (k < n_train % 5) if k < 5 else n_test
        pixels = images(rng, m, 32, 32)
        parts.append((pixels, [int(v) for v in rng.integers(0, len(classes), m)]))
    write_cifar10_arrays(root, parts[:5], parts[5], classes)
    return parts[:5], parts[5]


def _collect(parts: Sequence[Images], starts: Sequence[int]) -> dict:
    return {
        "images": np.concatenate([p[0] for p in parts]),
        "labels": [int(v) for p in parts for v in p[1]],
        "filenames": [f"img_{s + i:05d}.png" for p, s in zip(parts, starts, strict=True) for i in range(len(p[0]))],
    }


def write_cifar10(root: Path, n_train_per_batch: int = 2, n_test: int = 3, seed: int = 0) -> dict:
    """``root/cifar-10-batches-py`` with 5 train batches, a test batch and ``batches.meta``.

    Returns:
        ``{"classes": [...], "train": {"images", "labels", "filenames"}, "test": {...}, "dir": Path}``.
    """
    train, test = write_random_cifar10(root, 5 * n_train_per_batch, n_test, seed)
    return {
        "classes": list(CIFAR10_CLASSES),
        "train": _collect(train, [b * n_train_per_batch for b in range(5)]),
        "test": _collect([test], [0]),
        "dir": Path(root) / "cifar-10-batches-py",
    }


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict:
    """``root/cifar-100-python`` with ``train``, ``test`` and ``meta`` (fine and coarse labels).

    Returns:
        the same layout as :func:`write_cifar10`; labels are the fine labels.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    classes = [f"fine_{i:02d}" for i in range(100)]
    out = {"classes": classes, "dir": folder}
    for split, n in (("train", n_train), ("test", n_test)):
        part = (smooth_images(rng, n, 32, 32), [int(v) for v in rng.integers(0, 100, n)])
        entry = _cifar_entry(*part, 0, ("fine_labels",))
        entry["coarse_labels"] = [v // 5 for v in part[1]]
        _dump(folder / split, entry)
        out[split] = _collect([part], [0])
    _dump(
        folder / "meta",
        {"fine_label_names": classes, "coarse_label_names": [f"coarse_{i}" for i in range(20)]},
    )
    return out


def save_image(img_rgb: np.ndarray, mode: str, path: Path) -> None:
    """Save an RGB uint8 image in PIL ``mode`` (RGBA gets a gradient alpha, P an adaptive palette); JPEG by suffix."""
    im = Image.fromarray(img_rgb)
    if mode == "RGBA":
        alpha = np.linspace(0, 255, img_rgb.shape[1], dtype=np.uint8)[None, :].repeat(img_rgb.shape[0], 0)
        im = im.convert("RGBA")
        im.putalpha(Image.fromarray(alpha))
    elif mode == "P":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    elif mode != "RGB":
        im = im.convert(mode)
    fmt = "JPEG" if path.suffix.lower() == ".jpg" else "PNG"
    im.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def write_imagefolder(
    root: Path,
    splits: tuple[str, ...] = ("train", "val"),
    classes: tuple[str, ...] = ("cat", "dog", "zebra"),
    per_class: int = 6,
    seed: int = 0,
) -> dict:
    """``root/<split>/<class>/<image>`` with non-square images cycling through :data:`FOLDER_KINDS`.

    A ``README.txt`` in each class directory and a stray top-level image must both be ignored.

    Returns:
        ``{split: [{"id", "label", "size": (w, h), "mode"}, ...]}`` in the order the reader must produce.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict]] = {}
    for split in splits:
        split_dir = Path(root) / split if split != "all" else Path(root)
        rows = []
        for label, cls in enumerate(sorted(classes)):
            (split_dir / cls).mkdir(parents=True, exist_ok=True)
            (split_dir / cls / "README.txt").write_text("not an image\n")
            for i in range(per_class):
                mode, ext = FOLDER_KINDS[(i + label) % len(FOLDER_KINDS)]
                w, h = (int(v) for v in rng.integers(16, 49, 2))
                if w == h:
                    w += 1
                name = f"{cls}_{i:03d}{ext}"
                save_image(smooth_images(rng, 1, h, w)[0], mode, split_dir / cls / name)
                rows.append({"id": f"{cls}/{name}", "label": label, "size": (w, h), "mode": mode})
        save_image(smooth_images(rng, 1, 20, 30)[0], "RGB", split_dir / "stray.jpg")
        out[split] = sorted(rows, key=lambda r: (r["label"], r["id"]))
    return out


def write_inat(
    root: Path,
    categories: dict[int, str] | None = None,
    splits: tuple[str, ...] = ("train", "val"),
    per_category: int = 2,
    seed: int = 0,
) -> dict:
    """``root/{split}2018.json`` (COCO style) and images under ``root/train_val2018/<kingdom>/<cat id>/``.

    Category ids are non-contiguous (default 3, 17, 42) and listed out of order in the JSON, as are images.

    Returns:
        ``{"classes": [...names by increasing id], split: [{"image_id", "file_name", "label"}, ...] sorted by id}``.
    """
    rng = np.random.default_rng(seed)
    categories = categories or {42: "Zebra zebra", 3: "Acer rubrum", 17: "Bufo bufo"}
    order = sorted(categories)
    out: dict = {"classes": [categories[c] for c in order]}
    next_id = 1000
    for split in splits:
        images, anns, rows = [], [], []
        for cid in order:
            kingdom = "Plantae" if cid % 2 else "Animalia"
            for _ in range(per_category):
                image_id = next_id + int(rng.integers(1, 50))
                next_id = image_id
                file_name = f"train_val2018/{kingdom}/{cid}/{image_id:08x}.jpg"
                path = Path(root) / file_name
                path.parent.mkdir(parents=True, exist_ok=True)
                w, h = (int(v) for v in rng.integers(20, 40, 2))
                save_image(smooth_images(rng, 1, h, w)[0], "RGB", path)
                images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cid})
                rows.append({"image_id": image_id, "file_name": file_name, "label": order.index(cid)})
        perm = rng.permutation(len(images))
        doc = {
            "info": {"year": 2018},
            "images": [images[k] for k in perm],
            "annotations": [anns[k] for k in perm[::-1]],
            "categories": [{"id": c, "name": categories[c], "supercategory": "x"} for c in reversed(order)],
        }
        (Path(root) / f"{split}2018.json").write_text(json.dumps(doc))
        out[split] = sorted(rows, key=lambda r: r["image_id"])
    return out


def write_truncated_jpeg(path: Path, size: tuple[int, int] = (40, 30), keep: float = 0.5, seed: int = 0) -> Path:
    """A valid JPEG whose entropy-coded data is cut to ``keep``: the header parses, decoding the pixels fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(smooth_images(np.random.default_rng(seed), 1, size[1], size[0])[0], "RGB", path)
    data = path.read_bytes()
    start = data.index(b"\xff\xda")  # start of scan: everything before it is header
    path.write_bytes(data[: start + int((len(data) - start) * keep)])
    return path


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    """``img`` encoded as a JPEG (quality 90; ``subsampling=0`` for 4:4:4 and so on)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()
