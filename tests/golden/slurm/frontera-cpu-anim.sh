#!/bin/bash
#SBATCH --job-name=golden-job
#SBATCH --account=PROJ-1
#SBATCH --partition=small
#SBATCH --time=01:00:00
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --output=/cluster/work/braas-hpc/jobs/golden-job/log/slurm-%j.out
#SBATCH --exclusive

# braas-hpc job golden-job: 20 task(s), frames per task in frames.txt
set -u
umask 077  # frames, logs and markers are the user's alone
export BRAAS_TASK_BEGAN="$(date +%s)"  # before module loads and Blender's start: a task's whole cost
export BRAAS_TASK_ID="${SLURM_ARRAY_TASK_ID:-${BRAAS_TASK_ID:-${1:-}}}" BRAAS_JOB_ID="${SLURM_JOB_ID:-}"
BRAAS_THREADS=0 BRAAS_THREADS_FROM=
for v in SLURM_CPUS_PER_TASK SLURM_CPUS_ON_NODE OMP_NUM_THREADS; do eval "n=\${$v:-}"; case "$n" in ""|*[!0-9]*|0) ;; *) BRAAS_THREADS=$n BRAAS_THREADS_FROM=$v; break ;; esac; done
export BRAAS_THREADS BRAAS_THREADS_FROM
if [ -z "$BRAAS_TASK_ID" ]; then echo "braas-hpc: no array task id in the environment" >&2; exit 2; fi
cd /cluster/work/braas-hpc/jobs/golden-job || exit 2
exec >>/cluster/work/braas-hpc/jobs/golden-job/log/"task-$BRAAS_TASK_ID.log" 2>&1
if [ -L /cluster/work/braas-hpc ] || [ ! -O /cluster/work/braas-hpc ]; then echo 'braas-hpc: /cluster/work/braas-hpc is not your own directory any more (another user replaced it?): refusing to run anything from it' >&2; exit 2; fi
printf '%s  %s\n' SHA256 /cluster/work/braas-hpc/scripts/VERSION/render_task.py | sha256sum -c --status - || { echo 'braas-hpc: /cluster/work/braas-hpc/scripts/VERSION/render_task.py is not the script this job was submitted with (its SHA-256 differs): refusing to run it; braas-hpc install puts it back' >&2; exit 2; }
exec blender -b -Y /cluster/work/braas-hpc/jobs/golden-job/in/scene.blend -E CYCLES -t "$BRAAS_THREADS" -P /cluster/work/braas-hpc/scripts/VERSION/render_task.py -- --job-dir /cluster/work/braas-hpc/jobs/golden-job --task "$BRAAS_TASK_ID" --device CPU --format PNG --frames-file frames.txt --scene=Scene
