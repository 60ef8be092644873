#!/usr/bin/env bash
# Extract checkpoint sets as a Slurm job array: one task per (set, shard). Tasks do not talk to each other:
# task I of N writes the chunks i with i % N == I of every store of its set (featcache extract --shard I/N),
# the last task of a set to finish marks its stores complete, and a rerun of a failed task redoes only its
# missing chunks. A plain `featcache extract` of the same set afterwards fills whatever is still missing.
#
#   sbatch --array=0-15 pipeline/slurm_extract_array.sh            # 4 sets x 4 shards, defaults below
#   SETS="full step80k" SHARDS=8 DATASET=imagenet1k sbatch --array=0-15 pipeline/slurm_extract_array.sh
#
# Point the roots at shared storage (every node must see the same cache): FEATCACHE_CACHE, FEATCACHE_DATA,
# FEATCACHE_CHECKPOINTS (and FEATCACHE_CONFIG for your own registries).
#SBATCH --job-name=featcache-extract
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --output=featcache-extract-%A_%a.log
set -euo pipefail
read -r -a sets <<< "${SETS:-full step200k step100k step80k}"
shards=${SHARDS:-4}
task=${SLURM_ARRAY_TASK_ID:?run me with sbatch --array=0-$(( ${#sets[@]} * shards - 1 ))}
set_name=${sets[$(( task / shards ))]}
shard=$(( task % shards ))
exec featcache extract --ckpt "$set_name" --dataset "${DATASET:-cifar10}" --views "${VIEWS:-8}" \
    --shard "$shard/$shards" ${EXTRA_ARGS:-}
