#!/usr/bin/env python
"""Reproduce the headline table (cat1 vs cat2/cat4/cat5 under a fixed pretraining budget) with the CLI.

For every dataset: one `featcache extract` per checkpoint set (all its members share each decoded
batch; complete stores are skipped, interrupted ones resumed), then one `featcache probe` per row,
tagged so that `featcache results <tag>` lists the sweep. The table printed at the end is read back
from the results log, never scraped from logs.

    python pipeline/headline.py --datasets cifar10,cifar100            # the research checkpoints
    python pipeline/headline.py --datasets digits-transfer \\
        --rows "cat1=demo-seed0;cat2=demo-seed0,demo-seed1;cat4=demo" --preset quick   # after `featcache demo`
    python pipeline/headline.py --dry-run                              # print the commands only

Options before `--` go to this script; anything after `--` is passed to every featcache call
(e.g. `-- --cache-dir /scratch/cache`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

# Rows of the research figure: features and the checkpoints (a registry set or a list) behind them.
HEADLINE = "cat1=run0;cat2=step200k;cat4=step100k;cat5=step80k"


def featcache(args: list[str], common: list[str], dry_run: bool, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "featcache.cli", *common, *args]
    print("$ featcache " + shlex.join(common + args), flush=True)
    if dry_run:
        return "[]"
    done = subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return done.stdout or ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    common = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="cifar10,cifar100,inaturalist18", help="comma-separated datasets")
    p.add_argument("--rows", default=HEADLINE, help=f"'label=ckpts;...' (default: {HEADLINE})")
    p.add_argument("--preset", default="seed", help="probe preset (default: seed)")
    p.add_argument("--transform", help="transform preset for extraction (default: the dataset's)")
    p.add_argument("--tag", default="headline", help="tag of the probe records (default: headline)")
    p.add_argument("--dry-run", action="store_true", help="print the featcache commands, run nothing")
    args = p.parse_args(own)
    rows = [tuple(r.split("=", 1)) for r in args.rows.split(";") if r]
    for dataset in args.datasets.split(","):
        extract_opts = ["--dataset", dataset] + (["--transform", args.transform] if args.transform else [])
        for ckpts in dict.fromkeys(c for _, c in rows):
            featcache(["extract", "--ckpt", ckpts, *extract_opts], common, args.dry_run)
        for label, ckpts in rows:
            featcache(["probe", "--stores", ckpts, "--dataset", dataset, "--preset", args.preset,
                       "--tag", f"{args.tag} {label}"], common, args.dry_run)  # fmt: skip
    out = featcache(["results", args.tag, "--format", "json"], common, args.dry_run, capture=True)
    table = {}
    for rec in reversed(json.loads(out)):  # oldest first: the latest run of a row wins
        table.setdefault(rec["tag"].split()[-1], {})[rec["dataset"]] = rec["selected"]["test_top1"]
    if table:
        datasets = args.datasets.split(",")
        print("\nfeatures  " + "  ".join(f"{d:>14}" for d in datasets) + "   (test top-1 %, selected on val)")
        for label, _ in rows:
            print(f"{label:<8}  " + "  ".join(f"{table.get(label, {}).get(d, float('nan')):>14.2f}" for d in datasets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
