#!/bin/bash
# Rendered by `nodd submit --target slurm` for job shapes-train. Resubmit: sbatch /runs/shapes_train/job/sbatch.sh
#SBATCH --job-name=shapes-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=01:00:00
#SBATCH --output=/runs/shapes_train/logs/slurm-%j.out
#SBATCH --chdir=/srv/submit
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -uo pipefail

export OMP_NUM_THREADS=1
export PYTHONUNBUFFERED=1
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
echo "nodd: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"

# Rendezvous (c10d) on the first node; 1 node(s) x 2 process(es); gloo picks
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
srun --kill-on-bad-exit=1 --nodes=1 --ntasks-per-node=1 /opt/venv/bin/python -m torch.distributed.run --nnodes=1 --nproc-per-node=2 --rdzv-backend=c10d --shutdown-timeout=120 --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" -m pipeline.cli train --config /runs/shapes_train/job/config.toml --resume &
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
