"""The render task's device choice, per device kind, without bpy or a GPU (none can run here).

`cluster_scripts/devices.py` is the whole decision; render_task.py only lists Cycles' devices and
switches on the ids the plan names. GPU rendering itself cannot be tested on this machine.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from braas_hpc.core.schedulers import scheduler_for
from cluster_scripts.devices import Device, DeviceError, parse_request, plan_devices, threads_from_env

CPU = Device("CPU", "CPU", "AMD EPYC 7H12")


def gpus(kind: str, n: int) -> list[Device]:
    return [Device(kind, f"{kind}_GPU{i}_0000:0{i}:00", f"{kind} GPU {i}") for i in range(n)]


def test_cpu_enables_only_the_cpu() -> None:
    plan = plan_devices("CPU", [*gpus("CUDA", 2), CPU], {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert (plan.scene_device, plan.backend, plan.enable, plan.gpus) == ("CPU", "NONE", ("CPU",), 0)


@pytest.mark.parametrize(("kind", "variable", "value"), [
    ("CUDA", "CUDA_VISIBLE_DEVICES", "2,3"),
    ("OPTIX", "CUDA_VISIBLE_DEVICES", "GPU-5a1b2c3d-aaaa-bbbb-cccc-000000000001,GPU-5a1b2c3d-aaaa-bbbb-cccc-2"),
    ("HIP", "ROCR_VISIBLE_DEVICES", "4,5"),
    ("ONEAPI", "ZE_AFFINITY_MASK", "0.0,0.1"),
])
def test_gpu_enables_exactly_the_scheduler_gpus(kind: str, variable: str, value: str) -> None:
    devices = [*gpus(kind, 2), CPU, *gpus("CUDA" if kind != "CUDA" else "HIP", 1)]
    plan = plan_devices(kind, devices, {variable: value})
    assert plan.scene_device == "GPU" and plan.backend == kind and plan.gpus == 2
    assert plan.enable == tuple(d.id for d in gpus(kind, 2))  # not the CPU, not the other backend's device
    assert f"{variable}={value}" in plan.note


def test_plus_cpu_adds_the_cpu_device() -> None:
    plan = plan_devices("OPTIX+CPU", [*gpus("OPTIX", 1), *gpus("CUDA", 1), CPU], {"CUDA_VISIBLE_DEVICES": "0"})
    assert plan.enable == (gpus("OPTIX", 1)[0].id, "CPU") and plan.note.startswith("OPTIX+CPU")


def test_hip_visible_devices_wins_over_rocr() -> None:
    plan = plan_devices("HIP", gpus("HIP", 1), {"ROCR_VISIBLE_DEVICES": "0,1", "HIP_VISIBLE_DEVICES": "1"})
    assert plan.gpus == 1 and "HIP_VISIBLE_DEVICES=1" in plan.note


def test_no_mask_uses_every_gpu_of_the_node() -> None:
    plan = plan_devices("CUDA", gpus("CUDA", 4), {})
    assert plan.gpus == 4 and "every GPU of the node" in plan.note


@pytest.mark.parametrize(("request_", "devices", "env", "message"), [
    ("CUDA", [CPU], {"CUDA_VISIBLE_DEVICES": "0"}, "found none (it found: CPU)"),
    ("HIP", [*gpus("CUDA", 2), CPU], {}, "asked for a GPU (HIP) but Blender found none"),
    ("ONEAPI", [*gpus("ONEAPI", 1), CPU], {"ZE_AFFINITY_MASK": ""}, "gave this task no GPU"),
    ("CUDA", gpus("CUDA", 1), {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, "gave this task no GPU"),
    ("CUDA", gpus("CUDA", 4), {"CUDA_VISIBLE_DEVICES": "1"},
     "gave 1 GPU(s) (CUDA_VISIBLE_DEVICES=1) but Blender sees 4"),
])
def test_absent_or_unclear_gpus_fail_loudly(request_: str, devices: list[Device], env: dict[str, str],
                                           message: str) -> None:
    with pytest.raises(DeviceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_devices(request_, devices, env)


@pytest.mark.parametrize("text", ["VULKAN", "CPU+CPU", "CUDA+GPU", "CUDA+"])
def test_unknown_requests_are_refused(text: str) -> None:
    with pytest.raises(DeviceError, match="Cycles device|unknown"):
        parse_request(text)


@pytest.mark.parametrize(("scheduler", "env", "expected"), [
    ("slurm", {"SLURM_CPUS_PER_TASK": "16", "SLURM_CPUS_ON_NODE": "128", "OMP_NUM_THREADS": "4"},
     (16, "SLURM_CPUS_PER_TASK")),
    ("slurm", {"SLURM_CPUS_ON_NODE": "128"}, (128, "SLURM_CPUS_ON_NODE")),
    ("slurm", {"NCPUS": "32"}, (0, "")),  # another scheduler's variable means nothing under Slurm
    ("pbs", {"NCPUS": "32", "OMP_NUM_THREADS": "8"}, (32, "NCPUS")),
    ("pbs", {"OMP_NUM_THREADS": "8"}, (8, "OMP_NUM_THREADS")),
    ("pbs", {"NCPUS": "", "OMP_NUM_THREADS": "x"}, (0, "")),
    ("pbs", {"NCPUS": "0", "OMP_NUM_THREADS": "2"}, (2, "OMP_NUM_THREADS")),
])
def test_threads_come_from_the_allocation(scheduler: str, env: dict[str, str], expected: tuple[int, str]) -> None:
    """The scheduler's own lines of a job script, run by a real shell, then what the render task reads."""
    lines = ["set -u", *scheduler_for(scheduler).task_environment(), "env -0"]
    done = subprocess.run(["bash", "-c", "\n".join(lines)], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, check=True, timeout=30)
    exported = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    assert threads_from_env(exported) == expected


def test_the_task_id_comes_from_the_array_else_as_given() -> None:
    for scheduler, env, argv, expected in (("slurm", {"SLURM_ARRAY_TASK_ID": "3"}, [], "3|"),
                                           ("slurm", {"SLURM_JOB_ID": "77"}, ["5"], "5|77"),  # a plain job: $1
                                           ("pbs", {"PBS_ARRAY_INDEX": "2", "PBS_JOBID": "9[2].srv"}, [], "2|9[2].srv"),
                                           ("pbs", {"BRAAS_TASK_ID": "4"}, [], "4|")):  # qsub -v, one task
        lines = ["set -u", *scheduler_for(scheduler).task_environment(), 'echo "$BRAAS_TASK_ID|$BRAAS_JOB_ID"']
        done = subprocess.run(["bash", "-c", "\n".join(lines), "job.sh", *argv],
                              env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, check=True,
                              timeout=30)
        assert done.stdout.strip() == expected, (scheduler, env)
