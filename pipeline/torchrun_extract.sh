#!/usr/bin/env bash
# Extract a checkpoint set with every GPU of a node (or several nodes) as torch.distributed ranks: each rank
# writes the chunks i with i % WORLD_SIZE == RANK, rank 0 prints the progress bar and completes the stores.
#
#   bash pipeline/torchrun_extract.sh                       # all GPUs of this node, set full, cifar10
#   NPROC=4 SET=step80k DATASET=inaturalist18 bash pipeline/torchrun_extract.sh
#
# Several nodes: run the same command on each with torchrun's --nnodes/--node-rank/--rdzv-endpoint (or under
# srun with MASTER_ADDR and MASTER_PORT exported: featcache reads SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID).
# On a CPU-only machine the ranks use gloo: NPROC=2 DEVICE=cpu bash pipeline/torchrun_extract.sh
set -euo pipefail
nproc=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$nproc" -ge 1 ] || nproc=1
exec python -m torch.distributed.run --standalone --nproc-per-node "$nproc" -m featcache extract \
    --ckpt "${SET:-full}" --dataset "${DATASET:-cifar10}" --views "${VIEWS:-8}" --device "${DEVICE:-auto}" ${EXTRA_ARGS:-}
