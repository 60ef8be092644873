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
        "featcache/demo_data.py",
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
        "featcache/demo_data.py",
        "        colour = PALETTE[y] if c else np.full(3, 255.0, dtype=np.float32)\n",
        "        colour = PALETTE[(y + 1) % 10] if c else np.full(3, 255.0, dtype=np.float32)\n",
        ["tests/test_demo_data.py"],
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
