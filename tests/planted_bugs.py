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
    "100 CIFAR's low-shot permutation drawn by another generator than the research list's": (
        "featcache/lowshot.py",
        "    return np.random.RandomState(0).permutation(CIFAR_TRAIN_ROWS)\n",
        "    return np.random.default_rng(0).permutation(CIFAR_TRAIN_ROWS)\n",
        ["tests/test_lowshot.py"],
    ),
    "101 CIFAR's N% subset taken from the end of the permutation": (
        "featcache/lowshot.py",
        "rows = cifar_permutation()[: int(CIFAR_TRAIN_ROWS * float(fraction.percent) / 100)]",
        "rows = cifar_permutation()[-int(CIFAR_TRAIN_ROWS * float(fraction.percent) / 100) :]",
        ["tests/test_lowshot.py"],
    ),
    "102 the --data_rate draw seeded without the research offset 12345": (
        "featcache/lowshot.py",
        "        rng = np.random.default_rng(seed + DATA_RATE_OFFSET)\n",
        "        rng = np.random.default_rng(seed)\n",
        ["tests/test_lowshot.py"],
    ),
    "103 the --data_rate count in exact decimal arithmetic, not the research float product": (
        "featcache/lowshot.py",
        "        rows = order[: int(n_rows * rate)]\n",
        "        rows = order[: int(n_rows * fraction.percent / 100)]\n",
        ["tests/test_lowshot.py"],
    ),
    "104 undecodable rows kept in the low-shot subset": (
        "featcache/probe_splits.py",
        "    cut.valid_rows = np.intersect1d(train.valid_rows, rows)\n",
        "    cut.valid_rows = rows\n",
        ["tests/test_lowshot.py"],
    ),
    "105 the probe key ignores the low-shot subset": (
        "featcache/results_record.py",
        '    subset = {"train_subset": train_subset} if train_subset is not None else {}\n',
        "    subset = {}\n",
        ["tests/test_lowshot.py"],
    ),
    "106 ImageNet-V2's class folders numbered as strings ('10' before '2'), as ImageFolder does": (
        "featcache/datasets/shifted.py",
        "        ordered = sorted(folders, key=lambda f: _INDEX[wnid_of[f]])\n",
        "        ordered = sorted(folders)\n",
        ["tests/test_datasets_shifted.py"],
    ),
    "107 Camelyon17's OOD val and test hospitals swapped": (
        "featcache/datasets/wilds.py",
        "_OOD = {1: 3, 2: 2}",
        "_OOD = {1: 2, 2: 3}",
        ["tests/test_datasets_wilds.py"],
    ),
    "108 the SEER squeeze-excitation reduced from the bottleneck width, not the block's input": (
        "featcache/backbones/regnet.py",
        "_SqueezeExcitation(w_b, int(round(p.se_ratio * w_in)))",
        "_SqueezeExcitation(w_b, int(round(p.se_ratio * w_b)))",
        ["tests/test_backbones_research.py"],
    ),
    "109 SwAV's stem without its zero-padding layer": (
        "featcache/backbones/swav.py",
        "self.conv1(self.padding(x))",
        "self.conv1(x)",
        ["tests/test_backbones_research.py"],
    ),
    "80 the research column takes the val-selected numbers": (
        "featcache/report.py",
        "            tuple(r.research.test_top1 for r in recs if r.research is not None),\n",
        "            tuple(r.selected.test_top1 for r in recs if r.research is not None),\n",
        ["tests/test_report.py"],
    ),
    "81 the research column's best marked by the val-selected means": (
        "featcache/report.py",
        "        means = {r: c.research_mean if research else c.mean for r, c in cells.items()}\n",
        "        means = {r: c.mean for r, c in cells.items()}\n",
        ["tests/test_report.py"],
    ),
    "82 the plot's research line drawn from the val-selected numbers": (
        "featcache/report.py",
        "pts = [(x, c.research_mean, c.research_std) if research else (x, c.mean, c.std) for x, c in cells]",
        "pts = [(x, c.mean, c.std) for x, c in cells]",
        ["tests/test_report.py"],
    ),
    "83 a research repository's root taken for its checkpoints folder": (
        "featcache/config/checkpoints.py",
        "        return checkpoint_dir / RESEARCH_CHECKPOINTS\n",
        "        return checkpoint_dir\n",
        ["tests/test_research_layout.py"],
    ),
    "84 the research registry's paths read relative to checkpoints/, not the repository root": (
        "featcache/config/checkpoints.py",
        "            self._add_research(read_yaml(research), research, last, checkpoint_dir)\n",
        "            self._add_research(read_yaml(research), research, last, self.root)\n",
        ["tests/test_research_layout.py"],
    ),
    "85 the training step looked for under another key than AlgoPerf's global_step": (
        "featcache/checkpoints.py",
        '_STEP_KEYS = ("global_step",)\n',
        '_STEP_KEYS = ("step",)\n',
        ["tests/test_research_layout.py"],
    ),
    "86 --standardize off read as on (a non-empty string is true)": (
        "featcache/probe_config.py",
        '"standardize": None if standardize is None else standardize == "on"}',
        '"standardize": None if standardize is None else bool(standardize)}',
        ["tests/test_solver_options.py"],
    ),
    "87 k-NN's fixed-k number scored against the fit rows, not all of train": (
        "featcache/knn.py",
        '            .fit(*splits["train"])\n',
        '            .fit(*splits["fit"])\n',
        ["tests/test_knn.py"],
    ),
    "88 k-NN's fixed-k number at the temperature chosen on val, not DINO's": (
        "featcache/knn.py",
        "        one = replace(config, ks=(k,), temperatures=(DINO_TEMPERATURE,))\n",
        '        one = replace(config, ks=(k,), temperatures=(selected["temperature"],))\n',
        ["tests/test_knn.py"],
    ),
    "89 a strict store's key the same as a fast store's": (
        "featcache/results_record.py",
        '        return out | ({"fidelity": "strict"} if self.fidelity == "strict" else {})\n',
        "        return out\n",
        ["tests/test_fidelity.py"],
    ),
    "90 the saved SGD head is kept at the end of training, not at the selected epoch": (
        "featcache/solvers/sgd.py",
        "            if epoch == at[1]:\n",
        "            if epoch == probe.config.epochs:\n",
        ["tests/test_saved_head.py"],
    ),
    "91 the saved SGD head is another grid point's": (
        "featcache/solvers/sgd.py",
        "kept.append(probe.scoring_heads(blocks=True)[at[0]])",
        "kept.append(probe.scoring_heads(blocks=True)[0])",
        ["tests/test_saved_head.py"],
    ),
    "92 the saved L-BFGS head is the path's solution, not the refit test was read with": (
        "featcache/logreg.py",
        '"head": LinearHead(refit.coef_[0], refit.intercept_[0], "standardise", refit._mean, refit._inv_std,',
        '"head": LinearHead(path.coef_[k], path.intercept_[k], "standardise", path._mean, path._inv_std,',
        ["tests/test_saved_head.py"],
    ),
    "93 per-model blocks cut at equal widths (the research D // k) instead of each store's dim": (
        "featcache/saved_head.py",
        "        ends.append(ends[-1] + block.dim)\n",
        "        ends.append(ends[-1] + sum(b.dim for b in layout) // len(layout))\n",
        ["tests/test_saved_head.py"],
    ),
    "94 a block's bias keeps every block's share of BatchNorm's shift": (
        "featcache/linear_head.py",
        "return base if self.shift is None else base + self.shift[:, a:b].sum(-1)",
        "return base if self.shift is None else base + self.shift.sum(-1)",
        ["tests/test_saved_head.py"],
    ),
    "95 a shifted set's labels read as the head's classes (the class mask ignored)": (
        "featcache/linear_head.py",
        "count_hits(logits if keep is None else logits[:, keep], yb, k, hits[i])",
        "count_hits(logits, yb, k, hits[i])",
        ["tests/test_evaluate.py"],
    ),
    "96 classes matched by name but in the head's order, not the dataset's label order": (
        "featcache/head_layout.py",
        "        mask = [index[c] for c in classes]\n",
        "        mask = sorted(index[c] for c in classes)\n",
        ["tests/test_evaluate.py"],
    ),
    "97 stores of another layer score a head": (
        "featcache/head_layout.py",
        'MUST_MATCH = ("sha256", "layer", "pool", "dim")',
        'MUST_MATCH = ("sha256", "pool", "dim")',
        ["tests/test_evaluate.py"],
    ),
    "98 the report's per-model cell shows the whole head's accuracy": (
        "featcache/report.py",
        "per_model[(job.row, job.dataset)].append(float(np.mean([b.top1 for b in ev.per_model])))",
        "per_model[(job.row, job.dataset)].append(ev.top1)",
        ["tests/test_evaluate.py"],
    ),
    "110 rows of an object-storage chunk gathered in sorted order, not the order asked for": (
        "featcache/store/_remote_read.py",
        "            local = idx[group] - c * self.chunk_rows\n",
        "            local = np.sort(idx[group]) - c * self.chunk_rows\n",
        ["tests/test_remote.py"],
    ),
    "111 sync checks every chunk against chunk 0's checksum": (
        "featcache/store/_sync.py",
        "!= _marker_of(src, array, i).sha256:",
        "!= _marker_of(src, array, 0).sha256:",
        ["tests/test_remote.py"],
    ),
    "112 a remote results log read newest first": (
        "featcache/results_log.py",
        'names = [k for k in prefix.find() if k.endswith(".json") and "/" not in k]',
        'names = [k for k in reversed(prefix.find()) if k.endswith(".json") and "/" not in k]',
        ["tests/test_remote.py"],
    ),
    "113 a lease holder on another host judged by its pid on this host": (
        "featcache/store/_lease.py",
        '        if holder is not None and holder.get("host") == self.host:\n',
        "        if holder is not None:\n",
        ["tests/test_remote.py"],
    ),
    "114 a remote cache's results log kept under the remote cache": (
        "featcache/config/paths.py",
        'return self.results or self.local_cache / "results.jsonl"',
        'return self.results or self.cache / "results.jsonl"',
        ["tests/test_remote.py"],
    ),
    "130 sync changes a store that another extraction completed while its splits are still listed": (
        "featcache/store/_sync.py",
        'self.listed = have is not None and bool(json.loads(have)["attributes"]["featcache"].get("splits"))',
        "self.listed = False",
        ["tests/test_sync.py"],
    ),
    "131 sync keeps the replaced extraction's chunks and markers that the source lacks": (
        "featcache/store/_sync.py",
        "        for key in _files(dst):\n",
        "        for key in _files(src.path):\n",
        ["tests/test_sync.py"],
    ),
    "132 a remote log that is a whole bucket keeps its claims next to the bucket (another bucket)": (
        "featcache/results_claims.py",
        "    if isinstance(path, RemotePath) and len(path.parts) == 1:\n",
        "    if isinstance(path, RemotePath) and len(path.parts) == 0:\n",
        ["tests/test_remote_logs.py"],
    ),
    "61 a packed probe reads its stores' columns in the union's order, not its own": (
        "featcache/packed.py",
        "offsets[at[s.path] + 1]) for s in data.stores])\n",
        "offsets[at[s.path] + 1]) for s in sorted(data.stores, key=lambda s: at[s.path])])\n",
        ["tests/test_packed.py"],
    ),
    "62 a packed group's running statistics taken from the union's first columns": (
        "featcache/heads_step.py",
        "            alone.running_mean.copy_(self.running_mean[index])\n",
        "            alone.running_mean.copy_(self.running_mean[: len(cols)])\n",
        ["tests/test_packed.py"],
    ),
    "63 every packed group of one width scored on the first group's columns": (
        "featcache/heads_step.py",
        "            return xhat.index_select(1, self.index[k * self.D : (k + 1) * self.D])\n",
        "            return xhat.index_select(1, self.index[: self.D])\n",
        ["tests/test_packed.py"],
    ),
    "64 a packed group's heads start from another draw than alone": (
        "featcache/heads_step.py",
        "            gen = torch.Generator().manual_seed(self.config.seed)\n",
        "            gen = torch.Generator().manual_seed(self.config.seed + g)\n",
        ["tests/test_packed.py"],
    ),
    "65 a graphed step trains on the epoch's first batch again and again (its device counter never advances)": (
        "featcache/heads_step.py",
        "        self._t.add_(1)\n",
        "        self._t.add_(0)\n",
        ["tests/test_heads.py"],
    ),
    "66 a graphed epoch's last batches start one batch early": (
        "featcache/heads_step.py",
        "            for a, b in bounds[full:]:\n",
        "            for a, b in bounds[max(full - 1, 0) :]:\n",
        ["tests/test_heads.py"],
    ),
    "67 packed groups' learning rates laid out group-major, not head-major": (
        "featcache/heads_step.py",
        "            lr = per_head.repeat(fam.K)\n",
        "            lr = per_head.repeat_interleave(fam.K)\n",
        ["tests/test_packed.py"],
    ),
    "68 packed groups' weight decays laid out group-major, not head-major": (
        "featcache/heads_step.py",
        "wds.repeat(fam.K), rows)",
        "wds.repeat_interleave(fam.K), rows)",
        ["tests/test_packed.py"],
    ),
    "69 probes of other seeds (other batches) packed together": (
        "featcache/packed.py",
        "    return (cfg.heads, cfg.val_fraction,",
        "    return (dataclasses.replace(cfg.heads, seed=0), cfg.val_fraction,",
        ["tests/test_packed.py"],
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
    "140 a packed probe's saved head kept at the last epoch, not at its selected one": (
        "featcache/solvers/sgd.py",
        "                if e == epoch:\n",
        "                if epoch == self.heads.epochs:\n",
        ["tests/test_packed.py"],
    ),
    "141 a packed probe's saved head the first grid point, not its selected one": (
        "featcache/solvers/sgd.py",
        "                    kept[g] = packed.scoring_heads(g, blocks=True)[h]\n",
        "                    kept[g] = packed.scoring_heads(g, blocks=True)[0]\n",
        ["tests/test_packed.py"],
    ),
    "142 the steps of checkpoints whose stores exist never checked against their row's steps per model": (
        "featcache/sweep_check.py",
        "        if c.steps is not None and c.path not in specs and c.path.is_file():\n",
        "        if c.steps is not None and c.path in specs and c.path.is_file():\n",
        ["tests/test_sweep.py"],
    ),
    "143 a low-shot pack's union trained on the whole train split, not the subset's rows": (
        "featcache/packed.py",
        "        train.valid_rows = np.intersect1d(train.valid_rows, d0.train.valid_rows)\n",
        "        train.valid_rows = train.valid_rows\n",
        ["tests/test_packed.py"],
    ),
    "120 a shifted set's listed class_subset read as a head class per label, in the listed order": (
        "featcache/evaluate_config.py",
        "    if spec is not None and spec.format == SHIFT_FORMAT:\n",
        "    if spec is not None and spec.format == SHIFT_FORMAT and isinstance(subset, str):\n",
        ["tests/test_head_review.py"],
    ),
    "121 evaluate --stores without --dataset scored on the head's dataset's test split, not the stores' dataset's": (
        "featcache/evaluate_config.py",
        "    if dataset is None and stores is not None:  # the stores say which dataset they hold\n",
        "    if False:\n",
        ["tests/test_head_review.py"],
    ),
    "150 a JPEG over Pillow's pixel limit handed to the device decoder, not refused as a decompression bomb": (
        "featcache/readers.py",
        " and header[1] and header[2] and _not_huge(*header[1:]):",
        " and header[1] and header[2]:",
        ["tests/test_loaders_device.py"],
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
