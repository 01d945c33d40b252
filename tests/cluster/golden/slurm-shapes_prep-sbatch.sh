#!/bin/bash
# Rendered by `nodd submit --target slurm` for job shapes-prep. Resubmit: sbatch /runs/shapes_prep/job/sbatch.sh
#SBATCH --job-name=shapes-prep
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=00:30:00
#SBATCH --output=/runs/shapes_prep/logs/slurm-%j.out
#SBATCH --chdir=/srv/submit
#SBATCH --open-mode=append
set -uo pipefail

export OMP_NUM_THREADS=2
export PYTHONUNBUFFERED=1
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
echo "nodd: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"

# A Ray cluster inside the allocation: head on the first node, workers on the others.
head_ip=$(/opt/venv/bin/python -c 'import socket, sys; print(socket.gethostbyname(sys.argv[1]))' "$head_node")
export RAY_ADDRESS="$head_ip:6379"
srun --nodes=1 --ntasks=1 --overlap -w "$head_node" /opt/venv/bin/python -m ray.scripts.scripts start --head --node-ip-address="$head_ip" --port=6379 --num-cpus="$SLURM_CPUS_PER_TASK" --include-dashboard=false --block &
ray_pids=$!
# ready when the head's GCS port accepts connections
for _ in $(seq 240); do
  /opt/venv/bin/python -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)' "$head_ip" 6379 2>/dev/null && break
  sleep 0.5
done
/opt/venv/bin/python -m pipeline.cli prep --config /runs/shapes_prep/job/config.toml "ray.address=$RAY_ADDRESS"
status=$?
# stop only the Ray processes this job started (never `ray stop`: it kills every Ray on the node)
kill $ray_pids 2>/dev/null; wait
echo "nodd: prep finished with exit code $status"
exit "$status"
