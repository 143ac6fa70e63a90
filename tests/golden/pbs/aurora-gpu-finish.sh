#!/bin/bash
#PBS -N golden-job-finish
#PBS -A PROJ-1
#PBS -q prod
#PBS -l select=1:ncpus=1
#PBS -l walltime=00:15:00
#PBS -j oe
#PBS -o /cluster/work/braas-hpc/jobs/golden-job/log/pbs-golden-job-finish.log
#PBS -l filesystems=flare
#PBS -l place=scatter
#PBS -k doe
#PBS -r y

# braas-hpc job golden-job: finish step of round 0 (summary.json, thumb.jpg)
set -u
umask 077
cd /cluster/work/braas-hpc/jobs/golden-job || exit 2
exec >>/cluster/work/braas-hpc/jobs/golden-job/log/finish.log 2>&1
if [ -L /cluster/work/braas-hpc ] || [ ! -O /cluster/work/braas-hpc ]; then echo 'braas-hpc: /cluster/work/braas-hpc is not your own directory any more (another user replaced it?): refusing to run anything from it' >&2; exit 2; fi
printf '%s  %s\n' SHA256 /cluster/work/braas-hpc/scripts/VERSION/finish_task.py | sha256sum -c --status - || { echo 'braas-hpc: /cluster/work/braas-hpc/scripts/VERSION/finish_task.py is not the script this job was submitted with (its SHA-256 differs): refusing to run it; braas-hpc install puts it back' >&2; exit 2; }
exec blender -b --factory-startup -Y -t 1 -P /cluster/work/braas-hpc/scripts/VERSION/finish_task.py -- --job-dir /cluster/work/braas-hpc/jobs/golden-job --format PNG --round 0
