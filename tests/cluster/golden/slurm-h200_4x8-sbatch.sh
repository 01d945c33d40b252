#!/bin/bash
# Rendered by `nodd submit --target slurm` for job shapes-4x8. Resubmit: sbatch /runs/h200_4x8/job/sbatch.sh
#SBATCH --job-name=shapes-4x8
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=64
#SBATCH --mem=512G
#SBATCH --time=2-00:00:00
#SBATCH --output=/runs/h200_4x8/logs/slurm-%j.out
#SBATCH --chdir=/srv/submit
#SBATCH --open-mode=append
#SBATCH --gpus-per-node=8
#SBATCH --partition=gpu
#SBATCH --account=multimodal
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
set -uo pipefail

export OMP_NUM_THREADS=8
export PYTHONUNBUFFERED=1
export NCCL_DEBUG=WARN
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
echo "nodd: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"

# Rendezvous (c10d) on the first node; 4 node(s) x 8 process(es); NCCL picks
# the interface itself (set NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME in `env` if it picks wrong).
export MASTER_ADDR="$head_node" MASTER_PORT="$((20000 + SLURM_JOB_ID % 20000))"
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
preempted=0
on_preempt() {
  preempted=1
  echo "nodd: pre-emption notice: the trainers checkpoint and stop"
  kill -USR1 "$step" 2>/dev/null
}
trap on_preempt USR1
srun --kill-on-bad-exit=1 --nodes=4 --ntasks-per-node=1 --container-image=registry.example.com/nodd:gpu /opt/venv/bin/python -m torch.distributed.run --nnodes=4 --nproc-per-node=8 --rdzv-backend=c10d --shutdown-timeout=300 --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" -m pipeline.cli train --config /runs/h200_4x8/job/config.toml --resume &
step=$!
# `wait` returns when a trapped signal arrives: wait again until the step has ended
while true; do wait "$step"; status=$?; kill -0 "$step" 2>/dev/null || break; done
if [ "$preempted" = 1 ]; then
  echo "nodd: checkpoint saved (exit $status); requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
echo "nodd: training finished with exit code $status"
exit "$status"
