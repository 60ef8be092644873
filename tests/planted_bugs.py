"""Plant plausible bugs one at a time and check that the suite catches each (a mutation check, not a test).

    .venv/bin/python tests/planted_bugs.py            # every bug; prints CAUGHT or MISSED per bug
    .venv/bin/python tests/planted_bugs.py 1 4        # only bugs whose names start with these

Each bug is a one-line edit of the source; the file is restored afterwards whatever happens.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name: (file, the line as it is, the line with the bug, the tests that must catch it)
BUGS = {
    "1 reported head and epoch selected on test": (
        "featcache/solvers/sgd.py",
        '    h, e = _select(select.history_, "val_top1")\n',
        '    h, e = _select(final.history_, "test_top1")\n',
        ["tests/test_probe.py"],
    ),
    "2 ties broken toward the earlier epoch": (
        "featcache/solvers/sgd.py",
        "acc, epoch, neg_head = max((rec[key][h], e, -h)",
        "acc, epoch, neg_head = max((rec[key][h], -e, -h)",
        ["tests/test_probe.py"],
    ),
    "3 research number read off the val history": (
        "featcache/solvers/sgd.py",
        '    rh, re_ = _select(final.history_, "test_top1")\n',
        '    rh, re_ = _select(select.history_, "val_top1")\n',
        ["tests/test_probe.py"],
    ),
    "4 skipped row zeroed at its absolute row index": (
        "featcache/chunk_writer.py",
        "block[[r - start for r in skipped]] = 0",
        "block[skipped] = 0",
        ["tests/test_extract.py"],
    ),
    "5 views repeat before every view was used": (
        "featcache/feed.py",
        "        out += rng.permutation(n_views).tolist()\n",
        "        out += rng.integers(0, n_views, n_views).tolist()\n",
        ["tests/test_probe.py"],
    ),
    "6 training on the evaluation view when views are asked for": (
        "featcache/feed.py",
        "        return self.arrays.get(self.schedule[e], self.positions)\n",
        "        return self.arrays.get(None, self.positions)\n",
        ["tests/test_probe.py"],
    ),
    "7 stream visits a block twice and skips another": (
        "featcache/feed_stream.py",
        "    visit = rng.permutation(len(ids))  # only blocks",
        "    visit = rng.integers(0, len(ids), len(ids))  # only blocks",
        ["tests/test_feed.py"],
    ),
    "8 stream never reads the last block of the last buffer": (
        "featcache/feed_stream.py",
        "min((j + 1) * p.buffer_blocks, len(p.blocks))):",
        "min((j + 1) * p.buffer_blocks, len(p.blocks) - 1)):",
        ["tests/test_feed.py"],
    ),
    "9 stream rows not shuffled within a buffer": (
        "featcache/feed_stream.py",
        "np.concatenate([rng.permutation(m) for m in sizes])",
        "np.concatenate([np.arange(m) for m in sizes])",
        ["tests/test_feed.py"],
    ),
    "10 stream order the same every epoch": (
        "featcache/feed_stream.py",
        "    rng = np.random.default_rng([_SALT, seed, epoch])\n",
        "    rng = np.random.default_rng([_SALT, seed])\n",
        ["tests/test_feed.py"],
    ),
    "11 stream buffers sized by the whole budget": (
        "featcache/feed_stream.py",
        "    buffer_bytes = STREAM_SHARE * budget\n",
        "    buffer_bytes = budget\n",
        ["tests/test_feed.py"],
    ),
    "12 blocks of whole chunks of every store though a buffer holds one": (
        "featcache/feed_stream.py",
        "common if common * row_bytes * MIN_BUFFER_BLOCKS <= buffer_bytes",
        "common if common * row_bytes <= buffer_bytes",
        ["tests/test_feed.py"],
    ),
    "13 k-NN test scored against the fit rows only (val rows left out of the neighbours)": (
        "featcache/knn.py",
        '    final = KNNClassifier(one, n_features, n_classes, device, dtype, **blocks).fit(*splits["train"])\n',
        '    final = KNNClassifier(one, n_features, n_classes, device, dtype, **blocks).fit(*splits["fit"])\n',
        ["tests/test_knn.py"],
    ),
    "14 k-NN val scored with val among its own neighbours": (
        "featcache/knn.py",
        'knn = KNNClassifier(capped, n_features, n_classes, device, dtype, **blocks).fit(*splits["fit"])',
        'knn = KNNClassifier(capped, n_features, n_classes, device, dtype, **blocks).fit(*splits["train"])',
        ["tests/test_knn.py"],
    ),
    "15 L-BFGS test scored by the path model fitted on the fit rows, not the refit": (
        "featcache/logreg.py",
        '    test = refit.evaluate(*splits["test"])\n',
        '    test = path.evaluate(*splits["test"], index=k)\n',
        ["tests/test_logreg.py"],
    ),
    "16 L-BFGS val and test standardised with their own statistics": (
        "featcache/logreg.py",
        "rows = _Blocks(X, y, self._mean, self._inv_std, self.dtype, W.device, _EVAL_ROWS, False)",
        "rows = _Blocks(X, y, *[t.to(W.device, self.dtype) for t in (lambda m, s: (m, 1 / s))(*column_moments(X, "
        "self.n_features, _EVAL_ROWS))], self.dtype, W.device, _EVAL_ROWS, False)",
        ["tests/test_logreg.py"],
    ),
    "17 L-BFGS strength ties broken without the val loss": (
        "featcache/logreg.py",
        '(path[i][key], -path[i][loss], path[i]["strength"])',
        '(path[i][key], path[i]["strength"])',
        ["tests/test_logreg.py"],
    ),
    "18 L-BFGS grid C relative to the fit rows while the selection's is the refit's": (
        "featcache/solvers/lbfgs.py",
        '        n = len(splits["train"][1])\n',
        '        n = len(splits["fit"][1])\n',
        ["tests/test_probe.py"],
    ),
    "19 L-BFGS path fitted on all train rows (val rows choose their own fit)": (
        "featcache/logreg.py",
        '.fit(*splits["fit"], eval_sets={"val": splits["val"]})',
        '.fit(*splits["train"], eval_sets={"val": splits["val"]})',
        ["tests/test_logreg.py"],
    ),
    "70 L-BFGS keeps the curvature pairs it must drop (s.y < 0) and drops the others": (
        "featcache/lbfgs.py",
        "        if sy > 0:\n",
        "        if sy < 0:\n",
        ["tests/test_logreg.py"],
    ),
    "40 ImageFolder splits numbered on their own, not by the dataset's class map": (
        "featcache/datasets/_base.py",
        '    shared = {"class_splits": spec.splits} if cls.shares_classes else {}\n',
        "    shared = {}\n",
        ["tests/test_data.py", "tests/test_class_map.py"],
    ),
    "41 class maps compared as sets, so a reordering passes": (
        "featcache/classmap.py",
        "        if tuple(theirs) != tuple(mine):\n",
        "        if set(theirs) != set(mine):\n",
        ["tests/test_class_map.py"],
    ),
    "42 load_split reads a store whose splits number different classes": (
        "featcache/api.py",
        "        check_class_map(store, split)\n",
        "        pass\n",
        ["tests/test_class_map.py"],
    ),
    "20 probe key leaves out the stores' precision": (
        "featcache/results_record.py",
        '            "precision": self.precision,\n',
        "",
        ["tests/test_results.py", "tests/test_sweep.py"],
    ),
    "21 probe key leaves out the views' seed": (
        "featcache/results_record.py",
        'views={"count": views.count, "seed": views.seed, "augment": views.augment},',
        'views={"count": views.count, "augment": views.augment},',
        ["tests/test_results.py", "tests/test_sweep.py"],
    ),
    "22 probe key leaves out the extracted layer": (
        "featcache/results_record.py",
        '            "layer": self.layer,\n',
        "",
        ["tests/test_results.py", "tests/test_sweep.py"],
    ),
    "23 probe key leaves out the preprocessing": (
        "featcache/results_record.py",
        '            "transform": self.transform,\n',
        "",
        ["tests/test_results.py", "tests/test_sweep.py"],
    ),
    "24 report cell falls back to a record with the probe's tag": (
        "featcache/report.py",
        "        rec = plan.record(job)  # exactly this probe's key",
        "        rec = plan.record(job) or next((r for r in plan.done.values() if r.tag == job.config.tag), None)  #",
        ["tests/test_report.py", "tests/test_sweep.py"],
    ),
    "25 sweep probes a store whose checkpoint file changed": (
        "featcache/sweep_check.py",
        "    now = file_changed(spec.path, ref.sha256, ref.size, ref.mtime_ns)\n",
        "    now = None\n",
        ["tests/test_sweep.py"],
    ),
    "26 checkpoint file taken for the same by its size alone": (
        "featcache/checkpoints.py",
        "    if size is not None and (st.st_size, st.st_mtime_ns) == (size, mtime_ns):\n",
        "    if size is not None and st.st_size == size:\n",
        ["tests/test_sweep.py"],
    ),
    "27 a draw listed twice in a row is accepted": (
        "featcache/config/sweep.py",
        "        _no_repeats(row, source)\n",
        "        pass\n",
        ["tests/test_sweep.py"],
    ),
    "28 a draw of the same checkpoints in another order passes for another draw": (
        "featcache/sweep.py",
        "same = seen.setdefault(frozenset(c.name for c in specs), k)",
        "same = seen.setdefault(tuple(c.name for c in specs), k)",
        ["tests/test_sweep.py"],
    ),
    "29 two sweeps hold one probe's claim at once": (
        "featcache/results_claims.py",
        "fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))",
        "fcntl.flock(fd, fcntl.LOCK_SH | (0 if wait else fcntl.LOCK_NB))",
        ["tests/test_results.py", "tests/test_sweep.py"],
    ),
    "30 a repair without --views remakes only the views asked for (none)": (
        "featcache/extract_stores.py",
        "counts.append(max(want_views, w.meta.n_views))",
        "counts.append(want_views)",
        ["tests/test_views.py"],
    ),
    "31 one store named twice goes unnoticed when spelled two ways": (
        "featcache/store/_catalog.py",
        "            key = path.resolve()\n",
        "            key = path\n",
        ["tests/test_refusals.py"],
    ),
    "32 a single --layer store named after the checkpoint alone": (
        "featcache/extract.py",
        'name = f"{base}@{layer}" if layer else base',
        'name = f"{base}@{layer}" if len(cfg.layers) > 1 else base',
        ["tests/test_extract_stores.py"],
    ),
    "33 a verify verdict on an incomplete store recorded as damaged": (
        "featcache/store/_verify.py",
        '"incomplete" if incomplete else "damaged" if problems else "ok"',
        '"damaged" if problems else "ok"',
        ["tests/test_store.py"],
    ),
    "34 the reader's open chunk maps bounded by bytes only": (
        "featcache/store/_reader.py",
        "self.max_maps = max(2, min(MAX_MAPS, MAPPED_BYTES // chunk_bytes))",
        "self.max_maps = max(2, MAPPED_BYTES // chunk_bytes)",
        ["tests/test_store.py"],
    ),
    "35 a pool's width compared at one image size only": (
        "featcache/layers.py",
        "        other = (input_size[0] + 32, input_size[1] + 32)\n",
        "        other = input_size\n",
        ["tests/test_extract_stores.py"],
    ),
    "50 a random-init control seeded apart from its pretrained twin": (
        "featcache/demo.py",
        "                seeds[spec.name] = seeds[twin] if twin in seeds else len(seeds)\n",
        "                seeds[spec.name] = len(seeds)\n",
        ["tests/test_demo.py"],
    ),
    "51 a control compared with a budget row of another size": (
        "featcache/demo_report.py",
        "    pairs = [(next((r for r in budget if r.models == c.models), None), c)\n",
        "    pairs = [(next((r for r in budget if r.models <= c.models), None), c)\n",
        ["tests/test_demo.py"],
    ),
    "52 a difference held against the smaller spread of the two rows": (
        "featcache/demo_report.py",
        "    gain, spread = a.mean - b.mean, max(a.std or 0.0, b.std or 0.0)\n",
        "    gain, spread = a.mean - b.mean, min(a.std or 0.0, b.std or 0.0)\n",
        ["tests/test_demo.py"],
    ),
    "53 cat1 taken as the first budget row of the sweep": (
        "featcache/demo_report.py",
        "    single = next((r for r in budget if r.models == 1), None)\n",
        "    single = next((r for r in budget), None)\n",
        ["tests/test_demo.py"],
    ),
    "54 the mixture's plain share inverted": (
        "featcache/datasets/digits_mix.py",
        "        plain = rng.random(len(labels)) < float(plain_fraction)\n",
        "        plain = rng.random(len(labels)) > float(plain_fraction)\n",
        ["tests/test_demo_data.py"],
    ),
    "55 the plot's control line drawn from the one-network control": (
        "featcache/demo_report.py",
        "        twin = ctl.get(r.models)\n",
        "        twin = ctl.get(1)\n",
        ["tests/test_demo.py"],
    ),
    "56 a kept checkpoint not keyed by the pretraining task's options": (
        "featcache/demo.py",
        '    task = {"dataset": PRETRAIN, **reg.dataset(PRETRAIN).options}\n',
        '    task = {"dataset": PRETRAIN}\n',
        ["tests/test_demo.py"],
    ),
    "57 a cued digit drawn in the next class's colour": (
        "featcache/datasets/digits_mix.py",
        "        colour = PALETTE[y] if c else np.full(3, 255.0, dtype=np.float32)\n",
        "        colour = PALETTE[(y + 1) % 10] if c else np.full(3, 255.0, dtype=np.float32)\n",
        ["tests/test_demo_data.py"],
    ),
    "43 probe views default to the preset's count, not capped by what the stores hold": (
        "featcache/probe_config.py",
        '        views = min(chosen.views, shared_views(opened, options["train_split"])) if opened else chosen.views\n',
        "        views = chosen.views\n",
        ["tests/test_builders.py"],
    ),
    "44 the default train split is the stores' first split, not train": (
        "featcache/probe_config.py",
        '    train = train or ("train" if "train" in splits else next(iter(splits), None))\n',
        "    train = train or next(iter(splits), None)\n",
        ["tests/test_builders.py"],
    ),
    "45 a config field's lower bound is not enforced": (
        "featcache/records.py",
        "out_of = (low is not None and number and value < low) or (high",
        "out_of = (high",
        ["tests/test_config.py", "tests/test_sweep.py"],
    ),
    "60 --limit warns of classes the split never had (the dataset's class map taken for the split's)": (
        "featcache/datasets/_base.py",
        "        lost = sorted(set(np.unique(self.targets).tolist()) - set(np.unique(out.targets).tolist()))\n",
        "        lost = sorted(set(range(len(self.classes))) - set(np.unique(out.targets).tolist()))\n",
        ["tests/test_data.py"],
    ),
    "71 a center crop's offset floored, not rounded as torchvision rounds it": (
        "featcache/resample.py",
        "    row, col = int(round((out_h - crop) / 2.0)), int(round((out_w - crop) / 2.0))\n",
        "    row, col = (out_h - crop) // 2, (out_w - crop) // 2\n",
        ["tests/test_resample.py"],
    ),
    "72 Pillow 13's vertical-first pass order ignored": (
        "featcache/resample.py",
        "    return shrink > 0 and shrink > (crop.width - crop.out_w) * 2\n",
        "    return False\n",
        ["tests/test_resample.py"],
    ),
    "73 a view's flip reverses its rows, not its columns": (
        "featcache/resample.py",
        "        if axis == horizontal:  # a flip reverses the columns\n",
        "        if axis == vertical:  # a flip reverses the columns\n",
        ["tests/test_resample.py"],
    ),
    "74 file batches handed back newest first": (
        "featcache/readers.py",
        "            yield pending.popleft().result()\n",
        "            yield pending.pop().result()\n",
        ["tests/test_loaders_device.py"],
    ),
    "75 a JPEG header's height and width swapped": (
        "featcache/readers.py",
        "            frame = (data[i + 9], height, width)\n",
        "            frame = (data[i + 9], width, height)\n",
        ["tests/test_loaders_device.py"],
    ),
    "76 a batch's decoded images put in its first rows when some files are undecodable": (
        "featcache/loaders.py",
        "                full.index_copy_(0, _to_device(torch.tensor(good), device), made)\n",
        "                full.index_copy_(0, _to_device(torch.arange(len(good)), device), made)\n",
        ["tests/test_loaders_device.py"],
    ),
    "77 every store's chunks written by one thread": (
        "featcache/chunk_writer.py",
        "        k = self._route.setdefault(store, len(self._route) % len(self.queues))\n",
        "        k = self._route.setdefault(store, 0)\n",
        ["tests/test_chunk_writer.py"],
    ),
    "78 --compile auto counts images, not forward passes of every checkpoint": (
        "featcache/extract.py",
        "    return rows * len(cfg.checkpoints)\n",
        "    return rows\n",
        ["tests/test_fast_path.py"],
    ),
    "79 the table's projected extraction counts no augmented views": (
        "benchmarks/timecat_cost.py",
        '        passes = (d["train"] * (1 + d["views"]) + d["test"]) * len(work["checkpoints"])\n',
        '        passes = (d["train"] + d["test"]) * len(work["checkpoints"])\n',
        ["tests/test_timecat_cost.py"],
    ),
}


def main(only: list[str]) -> int:
    missed = 0
    for name, (rel, old, new, tests) in BUGS.items():
        if only and not any(name.startswith(o) for o in only):
            continue
        path = REPO / rel
        src = path.read_text()
        if src.count(old) != 1:
            print(f"{name}: cannot plant (the original line is not in {rel} exactly once; update this file)")
            missed += 1
            continue
        try:
            path.write_text(src.replace(old, new))
            cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
            r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        finally:
            path.write_text(src)
        verdict = "CAUGHT" if r.returncode else "MISSED"
        missed += r.returncode == 0
        print(f"{name}: {verdict} ({r.stdout.strip().splitlines()[-1]})", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
