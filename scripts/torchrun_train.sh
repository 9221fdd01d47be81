#!/usr/bin/env bash
# Lightning DDP training under torchrun (clusters without SLURM, or one big machine).
#
# One node, all its GPUs:
#   scripts/torchrun_train.sh ffhq data.train_dir=/data/ffhq
# Several nodes: run the same command on every node, with the same rendezvous endpoint (a host:port
# that all nodes reach, usually node 0) and job id:
#   NNODES=2 RDZV_ENDPOINT=node0.cluster:29500 RDZV_ID=ffhq-run1 scripts/torchrun_train.sh ffhq ...
#
# Settings (environment): NNODES (1), NPROC_PER_NODE (default: the GPUs torch sees on this node),
# RDZV_ENDPOINT (localhost:29500), RDZV_ID (psp); PYTHON and TORCHRUN default to the ones in .venv/
# when it exists, else to those on PATH (e.g. inside the Docker image).
# train.batch_size is per GPU: the effective batch is batch_size x NPROC_PER_NODE x NNODES.
# NCCL settings (NCCL_SOCKET_IFNAME, NCCL_IB_DISABLE, NCCL_DEBUG): see scripts/slurm/train.sbatch.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
config="${1:-ffhq}"
shift || true

venv_or_path() {  # .venv/bin/NAME when present, else NAME from PATH
    if [[ -x ".venv/bin/$1" ]]; then echo ".venv/bin/$1"; else echo "$1"; fi
}
python="${PYTHON:-$(venv_or_path python)}"
torchrun="${TORCHRUN:-$(venv_or_path torchrun)}"
nnodes="${NNODES:-1}"
nproc="${NPROC_PER_NODE:-$("${python}" -c 'import torch; print(torch.cuda.device_count())')}"
if [[ "${nproc}" -lt 1 ]]; then
    echo "torchrun_train.sh: no CUDA device visible; set NPROC_PER_NODE" >&2
    exit 2
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

exec "${torchrun}" \
    --nnodes "${nnodes}" --nproc-per-node "${nproc}" \
    --rdzv-backend c10d --rdzv-endpoint "${RDZV_ENDPOINT:-localhost:29500}" --rdzv-id "${RDZV_ID:-psp}" \
    train.py --config "${config}" \
    train.accelerator=gpu train.strategy=ddp train.num_nodes="${nnodes}" train.devices="${nproc}" \
    --resume auto "$@"
