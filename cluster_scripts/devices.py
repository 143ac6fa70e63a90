"""Which Cycles devices a render task uses, decided without bpy so it is tested without a GPU.

The scheduler says which GPUs belong to the task through the environment (CUDA_VISIBLE_DEVICES,
ROCR_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES, ZE_AFFINITY_MASK). The GPU runtimes apply those masks, so
Blender should list exactly that many devices; anything else is refused rather than guessed, and a
missing device is an error, never a silent fall back to the CPU.

Standard library only: this file is installed next to render_task.py on the cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

GPU_BACKENDS = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL")
# The variables that carry the scheduler's GPUs, per backend, the one applied last first.
MASK_VARIABLES = {
    "CUDA": ("CUDA_VISIBLE_DEVICES",),
    "OPTIX": ("CUDA_VISIBLE_DEVICES",),
    "HIP": ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"),
    "ONEAPI": ("ZE_AFFINITY_MASK",),
    "METAL": (),
}
_NO_DEVICES = ("", "NoDevFiles", "-1", "none")


class DeviceError(RuntimeError):
    """The requested device cannot be used as asked; the task exits with code 4."""


@dataclass(frozen=True)
class Device:
    """One entry of Cycles' device list (bpy's CyclesDeviceSettings: type, id, name)."""

    type: str
    id: str
    name: str


@dataclass(frozen=True)
class DevicePlan:
    scene_device: str  # scene.cycles.device: "CPU" or "GPU"
    backend: str  # preferences.compute_device_type ("NONE" for CPU rendering)
    enable: tuple[str, ...]  # ids of the devices to switch on; every other device is switched off
    gpus: int
    note: str  # what was chosen and why, for the task log and marker


def parse_request(text: str) -> tuple[str, bool]:
    """'OPTIX+CPU' -> ('OPTIX', True); 'CPU' -> ('CPU', False). Unknown names are refused."""
    backend, plus, extra = text.strip().upper().partition("+")
    if backend != "CPU" and backend not in GPU_BACKENDS:
        raise DeviceError(f"unknown Cycles device {text!r} (CPU, {', '.join(GPU_BACKENDS)}, optionally +CPU)")
    if plus and (extra != "CPU" or backend == "CPU"):
        raise DeviceError(f"Cycles device {text!r}: only a GPU backend can add '+CPU'")
    return backend, bool(plus)


def allocated_gpus(backend: str, env: Mapping[str, str]) -> tuple[str, list[str]] | None:
    """(variable, entries) of the scheduler's GPU mask for a backend, or None when no mask is set."""
    for name in MASK_VARIABLES.get(backend, ()):
        if name in env:
            value = env[name].strip()
            entries = [] if value in _NO_DEVICES else [e.strip() for e in value.split(",") if e.strip()]
            return name, entries
    return None


def plan_devices(request: str, devices: Sequence[Device], env: Mapping[str, str]) -> DevicePlan:
    """The devices to enable for `request` given Cycles' device list and the task's environment."""
    backend, with_cpu = parse_request(request)
    cpus = tuple(d.id for d in devices if d.type == "CPU")
    if backend == "CPU":
        return DevicePlan("CPU", "NONE", cpus, 0, "CPU")
    gpus = [d for d in devices if d.type == backend]
    mask = allocated_gpus(backend, env)
    if mask is not None and not mask[1]:
        raise DeviceError(f"the job asked for {backend} but the scheduler gave this task no GPU "
                          f"({mask[0]}={env[mask[0]]!r})")
    if not gpus:
        seen = ", ".join(sorted({d.type for d in devices})) or "nothing"
        raise DeviceError(f"the job asked for a GPU ({backend}) but Blender found none (it found: {seen})")
    if mask is not None and len(gpus) != len(mask[1]):
        # The runtime did not apply the mask as expected: using all would take other jobs' GPUs.
        raise DeviceError(f"the scheduler gave {len(mask[1])} GPU(s) ({mask[0]}={env[mask[0]]}) but Blender "
                          f"sees {len(gpus)} {backend} device(s): {', '.join(d.name for d in gpus)}")
    given = f"{mask[0]}={env[mask[0]]}" if mask else "no GPU mask set: every GPU of the node"
    enable = tuple(d.id for d in gpus) + (cpus if with_cpu else ())
    note = f"{backend}{'+CPU' if with_cpu else ''}: {', '.join(d.name for d in gpus)} ({given})"
    return DevicePlan("GPU", backend, enable, len(gpus), note)


def threads_from_env(env: Mapping[str, str]) -> tuple[int, str]:
    """(threads, the scheduler's variable they came from), as the job script exported them
    (BRAAS_THREADS, BRAAS_THREADS_FROM: each scheduler maps its own); (0, "") lets Blender use every core
    it sees."""
    value = env.get("BRAAS_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value), env.get("BRAAS_THREADS_FROM", "").strip() or "BRAAS_THREADS"
    return 0, ""
