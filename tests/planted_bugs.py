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
        "featcache/probe.py",
        '    h, e = _select(select.history_, "val_top1")\n',
        '    h, e = _select(final.history_, "test_top1")\n',
        ["tests/test_probe.py"],
    ),
    "2 ties broken toward the earlier epoch": (
        "featcache/probe.py",
        "acc, epoch, neg_head = max((rec[key][h], e, -h)",
        "acc, epoch, neg_head = max((rec[key][h], -e, -h)",
        ["tests/test_probe.py"],
    ),
    "3 research number read off the val history": (
        "featcache/probe.py",
        '    rh, re_ = _select(final.history_, "test_top1")\n',
        '    rh, re_ = _select(select.history_, "val_top1")\n',
        ["tests/test_probe.py"],
    ),
    "4 skipped row zeroed at its absolute row index": (
        "featcache/forward.py",
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
        "featcache/feed.py",
        "    visit = rng.permutation(len(ids))  # only blocks",
        "    visit = rng.integers(0, len(ids), len(ids))  # only blocks",
        ["tests/test_feed.py"],
    ),
    "8 stream never reads the last block of the last buffer": (
        "featcache/feed.py",
        "min((j + 1) * p.buffer_blocks, len(p.blocks))):",
        "min((j + 1) * p.buffer_blocks, len(p.blocks) - 1)):",
        ["tests/test_feed.py"],
    ),
    "9 stream rows not shuffled within a buffer": (
        "featcache/feed.py",
        "np.concatenate([rng.permutation(m) for m in sizes])",
        "np.concatenate([np.arange(m) for m in sizes])",
        ["tests/test_feed.py"],
    ),
    "10 stream order the same every epoch": (
        "featcache/feed.py",
        "    rng = np.random.default_rng([_SALT, seed, epoch])\n",
        "    rng = np.random.default_rng([_SALT, seed])\n",
        ["tests/test_feed.py"],
    ),
    "11 stream buffers sized by the whole budget": (
        "featcache/feed.py",
        "    buffer_bytes = STREAM_SHARE * budget\n",
        "    buffer_bytes = budget\n",
        ["tests/test_feed.py"],
    ),
    "12 blocks of whole chunks of every store though a buffer holds one": (
        "featcache/feed.py",
        "common if common * row_bytes * MIN_BUFFER_BLOCKS <= buffer_bytes",
        "common if common * row_bytes <= buffer_bytes",
        ["tests/test_feed.py"],
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
        "featcache/store/_reader.py",
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
