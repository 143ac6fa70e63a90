"""Partitions a preset marks preemptible: every scheduler asks, in its own words, that a job stopped there
goes back to the queue (Slurm --requeue, PBS Pro and Grid Engine -r y); elsewhere nothing changes."""

from __future__ import annotations

import dataclasses

import pytest

from braas_hpc.core.errors import PresetError
from braas_hpc.core.jobs import JobPaths, JobSpec
from braas_hpc.core.presets import BUILTIN_DIR, load_preset_file, preset_from_dict
from braas_hpc.core.schedulers import scheduler_for
from braas_hpc.core.schedulers.base import Round

REQUEUE = {"slurm": "--requeue", "pbs": "-r y", "sge": "-r y"}
PATHS = JobPaths("/w/braas-hpc", "shot-20260101-000000-abcd")


def _preset(scheduler: str) -> object:
    return preset_from_dict({
        "name": "site", "scheduler": scheduler, "host": "login", "workdir": "/w", "partition_cpu": "cpu",
        "partitions": {"cpu": {"kind": "cpu"}, "spare": {"kind": "cpu", "preemptible": True}}}, "test")


def _spec(partition: str, tasks: int) -> JobSpec:
    chunks = tuple((n,) for n in range(1, tasks + 1))
    return JobSpec(name="shot", preset="site", scene="/s.blend", frames=tuple(range(1, tasks + 1)), chunk=1,
                   walltime_min=30, tasks=chunks, partition=partition)


@pytest.mark.parametrize("scheduler", sorted(REQUEUE))
@pytest.mark.parametrize("tasks", [1, 3])  # PBS Pro: a one-task job is no array
def test_a_preemptible_partition_asks_to_be_requeued(scheduler: str, tasks: int) -> None:
    sched, preset = scheduler_for(scheduler), _preset(scheduler)
    prefix, wanted = sched.prefix, f"{sched.prefix} {REQUEUE[scheduler]}"
    spare = sched.directives(_spec("spare", tasks), preset, PATHS, Round(0, tasks))
    assert spare.count(wanted) == 1, spare  # a PBS array is rerunnable anyway: said once
    plain = sched.directives(_spec("cpu", tasks), preset, PATHS, Round(0, tasks))
    assert [line for line in spare if line != wanted] == [line.replace("=cpu", "=spare").replace(" cpu", " spare")
                                                         for line in plain if line != wanted], (spare, plain)
    if not (scheduler == "pbs" and tasks > 1):
        assert wanted not in plain and all(prefix in line for line in spare)


def test_the_finish_step_of_a_preemptible_default_asks_too() -> None:
    sched, preset = scheduler_for("slurm"), _preset("slurm")
    preset = dataclasses.replace(preset, partition_cpu="spare")
    script = sched.finish_script(_spec("spare", 2), preset, PATHS, ["blender"], "/f.py", Round(0, 2))
    assert "#SBATCH --requeue\n" in script and "#SBATCH --partition=spare\n" in script


def test_preemptible_is_a_boolean() -> None:
    with pytest.raises(PresetError, match=r"partitions\.spare.*preemptible"):
        preset_from_dict({"name": "site", "scheduler": "slurm", "partitions": {"spare": {"preemptible": "yes"}}}, "t")


def test_the_built_in_preemptible_queues() -> None:
    marked = {(p.stem, name) for p in BUILTIN_DIR.glob("*.toml")
              for name, part in load_preset_file(p).partitions.items() if part.preemptible}
    assert marked == {("karolina", "qcpu_preempt"), ("karolina", "qgpu_preempt"), ("barbora", "qgpu_preempt"),
                      ("polaris", "preemptable"), ("frontera", "flex")}
