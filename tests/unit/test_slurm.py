from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from braas_hpc.core.errors import SchedulerError
from braas_hpc.core.jobs import JobPaths, JobSpec, frames_file_text
from braas_hpc.core.monitor import aggregate
from braas_hpc.core.presets import preset_from_dict
from braas_hpc.core.schedulers.base import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, UNKNOWN
from braas_hpc.core.schedulers.slurm import SlurmScheduler

PRESET_DATA: dict[str, object] = {
    "name": "site", "scheduler": "slurm", "host": "login", "workdir": "/w", "account": "OPEN-1-1",
    "partition_cpu": "qcpu", "partition_gpu": "qgpu", "env": ["module load Blender/4.5"]}
PRESET = preset_from_dict(PRESET_DATA, "test")
SPEC = JobSpec(name="shot 1;$(x)", preset="site", scene="/s.blend", frames=(1, 2, 3), chunk=2,
               walltime_min=90, max_parallel=1, tasks=((1, 2), (3,)), account="OPEN-1-1", partition="qcpu")
PATHS = JobPaths("/w/braas-hpc", "shot1-20260101-000000-abcd")

EXPECTED = """#!/bin/bash
#SBATCH --job-name=shot_1___x_
#SBATCH --account=OPEN-1-1
#SBATCH --partition=qcpu
#SBATCH --array=1-2%1
#SBATCH --time=01:30:00
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --output=/w/braas-hpc/jobs/shot1-20260101-000000-abcd/log/slurm-%A_%a.out

# braas-hpc job shot 1;$(x): 2 task(s), frames per task in frames.txt
set -u
umask 077  # frames, logs and markers are the user's alone
export BRAAS_TASK_BEGAN="$(date +%s)"  # before module loads and Blender's start: a task's whole cost
module load Blender/4.5
export BRAAS_TASK_ID="${SLURM_ARRAY_TASK_ID:-${BRAAS_TASK_ID:-${1:-}}}" BRAAS_JOB_ID="${SLURM_JOB_ID:-}"
BRAAS_THREADS=0 BRAAS_THREADS_FROM=
for v in SLURM_CPUS_PER_TASK SLURM_CPUS_ON_NODE OMP_NUM_THREADS; do eval "n=\\${$v:-}"; case "$n" in ""|*[!0-9]*|0) ;; \
*) BRAAS_THREADS=$n BRAAS_THREADS_FROM=$v; break ;; esac; done
export BRAAS_THREADS BRAAS_THREADS_FROM
if [ -z "$BRAAS_TASK_ID" ]; then echo "braas-hpc: no array task id in the environment" >&2; exit 2; fi
cd /w/braas-hpc/jobs/shot1-20260101-000000-abcd || exit 2
exec >>/w/braas-hpc/jobs/shot1-20260101-000000-abcd/log/"task-$BRAAS_TASK_ID.log" 2>&1
if [ -L /w/braas-hpc ] || [ ! -O /w/braas-hpc ]; then echo 'braas-hpc: /w/braas-hpc is not your own directory any \
more (another user replaced it?): refusing to run anything from it' >&2; exit 2; fi
exec blender -b -Y /w/braas-hpc/jobs/shot1-20260101-000000-abcd/in/scene.blend -E CYCLES -t "$BRAAS_THREADS" \
-P '/w/my scripts/render_task.py' -- --job-dir /w/braas-hpc/jobs/shot1-20260101-000000-abcd --task "$BRAAS_TASK_ID" \
--device CPU --format PNG --frames-file frames.txt
"""


def test_array_script_golden() -> None:
    script = SlurmScheduler().render_script(SPEC, PRESET, PATHS, ["blender"], "/w/my scripts/render_task.py")
    assert script == EXPECTED.replace(" \\\n", " ")


def test_gpu_job_asks_for_gpus_the_site_way() -> None:
    gpu = JobSpec(**{**SPEC.to_dict(), "device": "GPU", "max_parallel": 0, "tasks": SPEC.tasks,
                     "frames": SPEC.frames, "partition": "qgpu", "gpus": 1, "cycles_device": "OPTIX"})
    lines = SlurmScheduler().directives(gpu, PRESET, PATHS)
    assert "#SBATCH --partition=qgpu" in lines and "#SBATCH --gpus=1" in lines
    assert "#SBATCH --array=1-2" in lines
    gres = preset_from_dict({**PRESET_DATA, "gpu_request": "gres", "drop_directives": ["--ntasks"],
                             "extra_directives": ["--constraint=a100"]}, "test")
    lines = SlurmScheduler().directives(gpu, gres, PATHS)
    assert "#SBATCH --gres=gpu:1" in lines and "#SBATCH --gpus=1" not in lines
    assert "#SBATCH --ntasks=1" not in lines and lines[-1] == "#SBATCH --constraint=a100"
    script = SlurmScheduler().render_script(gpu, PRESET, PATHS, ["blender"], "/r.py")
    assert "--device GPU --format PNG --frames-file frames.txt --cycles-device OPTIX" in script


def test_frames_file_maps_tasks_to_frames() -> None:
    assert frames_file_text(((1, 2), (3,), (10, 20))) == "1,2\n3\n10,20\n"


def test_parse_submit() -> None:
    slurm = SlurmScheduler()
    assert slurm.parse_submit("1234\n") == "1234"
    assert slurm.parse_submit("1234;karolina\n") == "1234"
    with pytest.raises(SchedulerError, match="sbatch: error: Batch job submission failed"):
        slurm.parse_submit("sbatch: error: Batch job submission failed: Invalid account\n")


# Captured from `sacct --parsable2 --noheader -X -o JobID,State%40,ExitCode -j 7,8,9` on the testbed.
SACCT = """7_1|COMPLETED|0:0
7_2|FAILED|1:0
8_[2-4]|PENDING|0:0
8_1|RUNNING|0:0
9_1|CANCELLED by 1001|0:0
9_2|TIMEOUT|0:1
"""


def test_parse_sacct() -> None:
    states = SlurmScheduler().parse_query(SACCT)
    assert [(s.job_id, s.task, s.state) for s in states] == [
        ("7", "1", COMPLETED), ("7", "2", FAILED), ("8", "[2-4]", PENDING), ("8", "1", RUNNING),
        ("9", "1", CANCELLED), ("9", "2", "TIMEOUT"),
    ]
    assert states[4].raw == "CANCELLED by 1001"


def test_query_is_one_batched_call() -> None:
    argv = SlurmScheduler().query_argv(["7", "8", "9"])
    assert argv[:2] == ["sh", "-c"] and argv[4] == "sacct" and argv[-2:] == ["-j", "7,8,9"]  # ids never in the script


def test_aggregate_trusts_frames_over_the_queue() -> None:
    slurm = SlurmScheduler()
    done, failed, running = (slurm.parse_query(x) for x in ("1_1|COMPLETED|0:0", "1_1|FAILED|1:0",
                                                             "1_1|COMPLETED|0:0\n1_2|RUNNING|0:0"))
    assert aggregate(done, frames_missing=0) == COMPLETED
    assert aggregate(done, frames_missing=1) == FAILED  # "COMPLETED" with a frame missing is a failure
    assert aggregate(failed, frames_missing=2) == FAILED
    assert aggregate(running, frames_missing=1) == RUNNING
    assert aggregate([], frames_missing=3) == UNKNOWN  # gone from the queue is not "finished"
    assert aggregate([], frames_missing=0) == COMPLETED
    # A resubmitted round not yet in the accounting database: not ended, whatever round 0 says.
    assert aggregate(done, frames_missing=2, unseen=True) == UNKNOWN


# Captured on the testbed (Slurm 22.05, PreemptType=preempt/partition_prio, PreemptMode=REQUEUE, JobRequeue=0):
# array 6402 (--requeue) and job 6406 (without) preempted by a job of a higher tier. For about three seconds
# sacct said PREEMPTED for both, while the controller's queue already had the requeued tasks waiting.
SACCT_PREEMPTED = "6402_1|PREEMPTED|0:0\n6402_2|PREEMPTED|0:0\n6406|PREEMPTED|0:0\n"
QUEUE_REQUEUED = "6402_1|PENDING|BeginTime\n6402_2|PENDING|BeginTime\n"


def test_a_requeued_task_is_pending_and_a_preempted_one_failed() -> None:
    slurm = SlurmScheduler()
    states = slurm.parse_query(SACCT_PREEMPTED + "@@queue\n" + QUEUE_REQUEUED)
    assert [(s.job_id, s.task, s.state, s.raw) for s in states] == [
        ("6402", "1", PENDING, "PENDING"), ("6402", "2", PENDING, "PENDING"), ("6406", "", FAILED, "PREEMPTED")]
    assert aggregate(states[:2], frames_missing=4) == PENDING  # not ended: nothing is resubmitted
    # Without the queue's word (it lists neither: both were cancelled), preempted is an end: FAILED, recovered.
    assert {s.state for s in slurm.parse_query(SACCT_PREEMPTED + "@@queue\n")} == {FAILED}
    # The queue's line replaces a PREEMPTED line only: a finished task stays as the accounting has it.
    done = slurm.parse_query("6402_1|COMPLETED|0:0\n@@queue\n6402_1|PENDING|BeginTime\n")
    assert [s.state for s in done] == [COMPLETED]


def test_the_query_asks_the_queue_only_after_a_preemption(tmp_path: Path) -> None:
    """The query's script in a real shell, the sacct command replaced by one that prints captured lines."""
    (tmp_path / "sh").symlink_to("/bin/sh")  # the only command on PATH: squeue, if asked, is not found

    def run(sacct_lines: str) -> subprocess.CompletedProcess[str]:
        argv = SlurmScheduler().query_argv(["6402"])
        sacct = argv.index("sacct")
        argv[sacct:] = ["sh", "-c", 'printf %s "$1"', "sacct", sacct_lines, "6402"]  # the ids stay last
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, env={"PATH": str(tmp_path)})

    quiet = run("6402_1|RUNNING|0:0\n")
    assert quiet.returncode == 0 and quiet.stdout == "6402_1|RUNNING|0:0\n"
    preempted = run(SACCT_PREEMPTED)
    assert preempted.returncode == 0 and preempted.stdout == SACCT_PREEMPTED + "@@queue\n"
    failing = subprocess.run(["sh", "-c", SlurmScheduler().query_argv(["1"])[2], "sh", "false"], timeout=30,
                             capture_output=True)
    assert failing.returncode == 1  # sacct's failure is the query's: the monitor then asks squeue instead
