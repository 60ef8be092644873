#!/usr/bin/env bash
# Run a featcache sweep as a Slurm job: by default the Time-Cat grid (configs/sweeps/timecat.yaml: cat1/cat2/cat4/cat5
# of the research ResNet50s on ImageNet-1k, iNat18, CIFAR-100, CIFAR-10). This script only launches
# `featcache sweep`; the sweep itself extracts what is missing, probes what is not logged and writes the report.
#
#   sbatch pipeline/slurm_sweep.sh                    # every dataset in one job
#   sbatch --array=0-3 pipeline/slurm_sweep.sh        # one dataset per array task (the DATASETS list below)
#   SWEEP=digits sbatch pipeline/slurm_sweep.sh       # another sweep: a path, or a name in sweeps/ of the registries
#   sbatch pipeline/slurm_sweep.sh --dry-run          # arguments go to `featcache sweep`
#
# Shared storage. Point the roots at storage every node sees, with environment variables (sbatch exports them):
#   export FEATCACHE_DATA=/datasets                        # cifar/, imagenet/, inaturalist18/ below it
#   export FEATCACHE_CHECKPOINTS=/checkpoints/richreps     # the paths of configs/checkpoints.yaml below it
#   export FEATCACHE_CACHE=/scratch/$USER/featcache        # stores and results.jsonl; reports in reports/
# (or --data-dir, --checkpoint-dir, --cache-dir, --results after the script). Stores are locked per store (NFS
# too) and the results log is appended under flock, so array tasks and resubmissions share one cache. A job that
# is killed, times out or is preempted resumes when submitted again: complete stores and logged probes are skipped.
#SBATCH --job-name=featcache-sweep
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --mem=128G
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

SWEEP=${SWEEP:-configs/sweeps/timecat.yaml}
FEATCACHE=${FEATCACHE:-featcache}  # e.g. FEATCACHE="python -m featcache" without the console script
DATASETS=(imagenet1k inaturalist18 cifar100 cifar10)

args=(sweep "$SWEEP" --quiet)
if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  args+=(--dataset "${DATASETS[$SLURM_ARRAY_TASK_ID]}")
fi
# shellcheck disable=SC2086  # FEATCACHE may be a command with arguments
exec $FEATCACHE "${args[@]}" "$@"
