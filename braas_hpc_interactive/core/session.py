"""Interactive sessions: a job that holds a compute node, commands run inside it, and their end.

`start` submits the holding job through the scheduler layer; `run` starts one command inside the job
(through a step of the running job where the scheduler has one, Slurm's `srun --overlap`; else the
holding job itself starts it when asked, as on PBS Pro, which cannot add a step to a running job);
`follow` streams its output; `stop` ends exactly that
command's process group and, unless asked to keep it, the job. All of it goes through the preset's
transport, so every SSH back end works.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from braas_hpc.core import progress, store
from braas_hpc.core.cluster_blender import installed_blender
from braas_hpc.core.errors import RemoteCommandError, SchedulerError, UsageError
from braas_hpc.core.jobs import JobSpec
from braas_hpc.core.packing import MAIN_BLEND, pack_scene
from braas_hpc.core.presets import Preset, load_preset
from braas_hpc.core.schedulers import scheduler_for
from braas_hpc.core.schedulers.base import TERMINAL, Round, TaskState, Trust, trust_lines
from braas_hpc.core.transport import StreamLine, Transport, quote_command, transport_for
from braas_hpc.core.tree import UntrustedTree, ensure_root, remote_root

from ..node import SERVER_FILES
from . import launch, node_script
from .records import (
    Connection,
    SessionPaths,
    SessionRecord,
    forget_record,
    new_session_name,
    save_record,
)

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 300.0
STARTED_TIMEOUT_S = 60.0
POLL_S = 0.5


@dataclasses.dataclass(frozen=True)
class SessionState:
    record: SessionRecord
    job_state: str  # normalised scheduler state (PENDING, RUNNING, ... UNKNOWN)
    node: str  # "" until the job runs
    command: str  # "none", "running", "exited N"
    port: int | None  # where the server listens on the node, once it runs


def holder_spec(preset: Preset, name: str, walltime_min: int | None, gpu: bool) -> JobSpec:
    """The holding job's request: one task on one node, CPU or GPU partition, the preset's account."""
    if preset.is_local:
        raise UsageError(f"interactive sessions need a cluster; preset {preset.name} is this computer")
    partition = preset.default_partition(gpu)
    if not partition:
        raise UsageError(f"preset {preset.name} has no default {'GPU' if gpu else 'CPU'} partition")
    part = preset.partition(partition)
    if gpu and part.kind != "gpu":
        raise UsageError(f"partition {partition} of preset {preset.name} has no GPUs")
    walltime = walltime_min or part.default_walltime_min or preset.default_walltime_min
    limit = part.max_walltime_min if preset.partitions else preset.max_walltime_min
    if walltime > limit:
        raise UsageError(f"walltime {walltime} min is above the limit of {partition} ({limit} min)")
    spec = JobSpec(name=name, preset=preset.name, scene="", frames=(1,), tasks=((1,),), walltime_min=walltime,
                   account=preset.account, partition=partition, qos=part.qos, device="GPU" if gpu else "CPU",
                   cycles_device=part.cycles_device if gpu else "CPU", gpus=(part.gpus_per_task or 1) if gpu else 0,
                   cpus=part.cpus_per_task, whole_node=part.whole_node)
    spec.validate()
    return spec


def holder_script(preset: Preset, spec: JobSpec, paths: SessionPaths) -> str:
    """The batch script: directives from the scheduler layer, then the node script's `hold`."""
    scheduler = scheduler_for(preset.scheduler)
    plain = dataclasses.replace(preset, arrays=False)  # one plain job, never an array
    header = scheduler.directives(spec, plain, paths, Round(0, 1))  # type: ignore[arg-type]  # JobPaths' face
    hold = ["bash", paths.node_script, "hold", paths.dir, str(spec.walltime_min * 60)]
    # Before it runs the node script: the tree is still the user's, the script the one written at start.
    digest = hashlib.sha256(node_script.SCRIPT.encode()).hexdigest()
    trust = trust_lines(paths, paths.node_script, Trust(digest))  # type: ignore[arg-type]  # JobPaths' face
    return "\n".join(["#!/bin/bash", *header, "", f"# braas-hpc interactive session {paths.name}", "set -u",
                      "umask 077", *preset.env, *scheduler.task_environment(), *trust, f"exec {quote_command(hold)}",
                      ""])


# A new temp file of our own (noclobber, a name per process), then renamed over the file.
_WRITE = 'set -C; t="$1.$$.tmp"; cat > "$t" && chmod "$2" "$t" && mv -f "$t" "$1" || { rm -f "$t"; exit 1; }'


async def _write(t: Transport, path: str, text: str, mode: str = "644") -> None:
    await t.run(["sh", "-c", _WRITE, "sh", path, mode], stdin=text)


async def _checked(record: SessionRecord) -> Transport:
    """The session's transport once its tree checked out (core.tree): a session directory another user
    replaced is refused before anything in it is run or written."""
    t = _transport(record)
    await ensure_root(t, record.paths.root)
    return t


async def start(preset_name: str, walltime_min: int | None = None, gpu: bool = False, blendfile: str = "",
                backend: str | None = None, scene: Path | None = None) -> SessionRecord:
    """Submit the holding job; returns at once (see `wait_ready`). `scene`: a local .blend to pack and
    upload for the session (its path on the cluster becomes `blendfile`)."""
    if scene is not None and blendfile:
        raise UsageError("give either a local scene to upload or a .blend already on the cluster, not both")
    if scene is not None and not scene.is_file():
        raise UsageError(f"no such scene: {scene}")
    preset = load_preset(preset_name)
    name = new_session_name()
    spec = holder_spec(preset, name, walltime_min, gpu)
    paths = SessionPaths(remote_root(preset), name)
    t = transport_for(preset, backend)
    with tempfile.TemporaryDirectory(prefix="braas-session-") as temp:
        packed = None
        if scene is not None:  # packed first: missing files are refused before the cluster sees anything
            progress.report("packing the scene")
            packed = Path(temp) / MAIN_BLEND
            report = await pack_scene(scene, packed, keep_unpacked=True)
            if report.unpacked:  # a session sends one .blend: say what it renders without
                progress.report(f"not sent (Blender cannot pack them): {', '.join(report.unpacked[:4])}")
                log.warning("session %s renders without files Blender cannot pack: %s", name,
                            ", ".join(report.unpacked))
        await ensure_root(t, paths.root, [paths.dir])
        if packed is not None:
            # Images inside, through the store: a scene sent before (for a job or a session) is not sent again.
            progress.report("uploading the scene")
            await store.upload_inputs(t, paths.root, paths.file("in"), {MAIN_BLEND: packed})
            blendfile = paths.file(f"in/{MAIN_BLEND}")
    await _write(t, paths.node_script, node_script.SCRIPT, "755")
    await _write(t, paths.file("blendfile"), blendfile + ("\n" if blendfile else ""))
    script = holder_script(preset, spec, paths)
    await _write(t, paths.file("job.sh"), script, "755")
    scheduler = scheduler_for(preset.scheduler)
    done = await t.run(scheduler.submit_argv(paths.file("job.sh")))
    job_id = scheduler.parse_submit(done.stdout)
    record = SessionRecord(name=name, preset=preset.name, scheduler=preset.scheduler, job_id=job_id,
                           root=paths.root, walltime_min=spec.walltime_min, gpu=gpu, created=time.time(),
                           ssh_backend=backend)
    save_record(record)
    return record


def _transport(record: SessionRecord) -> Transport:
    return transport_for(load_preset(record.preset), record.ssh_backend)


async def job_state(record: SessionRecord) -> str:
    """The holding job's state. The live queue first where the scheduler has one apart from its history
    (Slurm: squeue; sacct can lag behind a job that just started), then the history (ended jobs)."""
    scheduler = scheduler_for(record.scheduler)
    t = _transport(record)
    live = scheduler.live_query_argv([record.job_id])
    states: list[TaskState] = []
    if live:
        done = await t.run(live, check=False)
        states = scheduler.parse_fallback(done.stdout) if done.exit_status == 0 else []
    if not states:
        done = await t.run(scheduler.query_argv([record.job_id]), check=False)
        states = scheduler.parse_query(done.stdout) if done.exit_status == 0 else []
    return states[0].state if states else "UNKNOWN"


async def _read(t: Transport, path: str) -> str | None:
    done = await t.run(["cat", "--", path], check=False)
    return done.stdout if done.exit_status == 0 else None


async def wait_ready(record: SessionRecord, timeout: float = READY_TIMEOUT_S) -> str:
    """Wait until the job runs and has written hostname.txt; returns the node's host name."""
    t = _transport(record)
    deadline = time.monotonic() + timeout
    checked = 0.0
    while time.monotonic() < deadline:
        node = await _read(t, record.paths.file("hostname.txt"))
        if node and node.strip():
            return node.strip()
        if time.monotonic() - checked > 5:
            checked = time.monotonic()
            state = await job_state(record)
            if state in TERMINAL:
                raise SchedulerError(f"session {record.name}: job {record.job_id} ended ({state}) before it started")
        await asyncio.sleep(POLL_S)
    raise SchedulerError(f"session {record.name}: job {record.job_id} did not start within {timeout:.0f} s "
                         f"(state {await job_state(record)})")


async def blendfile_of(record: SessionRecord) -> str:
    """The scene the session was started with (its `blendfile` file on the cluster), or ""."""
    return (await _read(_transport(record), record.paths.file("blendfile")) or "").strip()


async def install_server(record: SessionRecord) -> None:
    """Put the built-in render server in the session's directory, its files side by side as it expects
    (launch.builtin_argv): the add-on's own version, whatever ran there before."""
    t = await _checked(record)
    for source in SERVER_FILES:
        await _write(t, record.paths.file(source.name), source.read_text(encoding="utf-8"))


def _command_script(preset: Preset, argv: Sequence[str]) -> str:
    return "\n".join(["#!/bin/sh", "# braas-hpc interactive command", "umask 077", *preset.env,
                      f"exec {quote_command(argv)}", ""])


async def run(record: SessionRecord, argv: Sequence[str], timeout: float = STARTED_TIMEOUT_S) -> None:
    """Start a command inside the session's job; returns once it runs (its process group is known)."""
    if not argv:
        raise UsageError("no command given to run")
    preset = load_preset(record.preset)
    t = await _checked(record)
    paths = record.paths
    await wait_ready(record, timeout=10)
    if await _command_running(t, paths):
        raise UsageError(f"a command already runs in session {record.name}; stop it first")
    await t.run(["rm", "-f", "--", *(paths.file(f) for f in ("command.exit", "command.pid", "connection.json"))])
    await _write(t, paths.file("command.sh"), _command_script(preset, argv), "700")
    launch = scheduler_for(record.scheduler).step_argv(record.job_id, ["bash", paths.node_script, "exec", paths.dir])
    if launch:
        # Detached from this SSH session: the command outlives a dropped connection; Stop ends it.
        await t.run(["setsid", "sh", "-c", 'nohup "$@" > "$0" 2>&1 < /dev/null &', paths.file("launch.log"),
                     *launch])
    else:
        await t.run(["touch", "--", paths.file("run.request")])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await _read(t, paths.file("command.pid")) or await _read(t, paths.file("command.exit")):
            return
        await asyncio.sleep(POLL_S)
    log = await _read(t, paths.file("launch.log")) or ""
    raise SchedulerError(f"session {record.name}: the command did not start within {timeout:.0f} s\n{log[-2000:]}")


async def start_server(record: SessionRecord, kind: str, *, gpu: bool | None = None, blendfile: str = "",
                       command: str = "", blenderphi: str = launch.BLENDERPHI_DEFAULT,
                       open_port_ok: bool = False) -> list[str]:
    """Start a server of `kind` in the session (what the panel's Run and `braas-hpc interactive serve`
    do): the session's scene unless another is given, the Blender `braas-hpc install` recorded, the
    built-in server's files copied first. BlenderPhi needs `open_port_ok` (launch.BLENDERPHI_EXPOSURE).
    Returns the argv it runs."""
    launch.require_open_port_ok(kind, open_port_ok)
    preset = load_preset(record.preset)
    installed = installed_blender(preset.name)
    if kind != launch.COMMAND and not blendfile:
        progress.report("reading the session's scene path")
        blendfile = await blendfile_of(record)
    argv = launch.server_argv(kind, preset, record, record.gpu if gpu is None else gpu, blendfile=blendfile,
                              command=command, blenderphi=blenderphi,
                              blender=installed.blender if installed else "", setup=installed.env if installed else ())
    if kind == launch.BUILTIN:
        progress.report("copying the render server")
        await install_server(record)
    progress.report("starting the command")
    await run(record, argv)
    return argv


async def _command_running(t: Transport, paths: SessionPaths) -> bool:
    return bool(await _read(t, paths.file("command.pid"))) and await _read(t, paths.file("command.exit")) is None


_FOLLOW = """cd "$1" || exit 2
tail -n +1 -F command.log 2>/dev/null & a=$!
tail -n +1 -F command.err >&2 2>/dev/null & b=$!
trap 'kill $a $b 2>/dev/null' EXIT
while [ ! -e command.exit ]; do sleep 0.3; done
sleep 0.5
"""


async def follow(record: SessionRecord) -> AsyncIterator[StreamLine]:
    """The command's stdout and stderr lines as they are written, until it exits (see `exit_status`)."""
    t = _transport(record)
    async with contextlib.aclosing(t.stream(["sh", "-c", _FOLLOW, "sh", record.paths.dir], check=False)) as lines:
        async for line in lines:
            yield line


async def exit_status(record: SessionRecord) -> int | None:
    text = await _read(_transport(record), record.paths.file("command.exit"))
    return int(text.strip()) if text and text.strip().lstrip("-").isdigit() else None


async def connection(record: SessionRecord, timeout: float = STARTED_TIMEOUT_S) -> Connection:
    """The running command's connection file (host, port, token), once it exists."""
    t = _transport(record)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await _read(t, record.paths.file("connection.json"))
        if text:
            return Connection.parse(text)
        await asyncio.sleep(POLL_S)
    raise SchedulerError(f"session {record.name}: no connection file after {timeout:.0f} s (is a command running?)")


async def stop(record: SessionRecord, keep_job: bool = False, timeout: float = STARTED_TIMEOUT_S) -> str:
    """End the session's command (its process group only) and, unless keep_job, the job. Returns what
    happened to the command: "stopped", "killed", "ended" or "no command"."""
    t = _transport(record)
    paths = record.paths
    result = "no command"
    try:
        await ensure_root(t, paths.root)
    except UntrustedTree:  # nothing in the tree is run: the job is cancelled, which ends its command too
        with contextlib.suppress(RemoteCommandError):
            await t.run(scheduler_for(record.scheduler).cancel_argv([record.job_id]))
        forget_record(record.name)
        raise
    if await job_state(record) not in TERMINAL and await _read(t, paths.file("hostname.txt")):
        result = await _stop_command(record, t, paths, timeout)
    if not keep_job:
        scheduler = scheduler_for(record.scheduler)
        with contextlib.suppress(RemoteCommandError):  # already ended
            await t.run(scheduler.cancel_argv([record.job_id]))
        forget_record(record.name)
    return result


async def _stop_command(record: SessionRecord, t: Transport, paths: SessionPaths, timeout: float) -> str:
    step = scheduler_for(record.scheduler).step_argv(record.job_id, ["bash", paths.node_script, "stop", paths.dir])
    if step:
        done = await t.run(step, timeout=timeout)
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "stopped"
    await t.run(["rm", "-f", "--", paths.file("stop.result")])
    await t.run(["touch", "--", paths.file("stop.request")])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await _read(t, paths.file("stop.result"))
        if text is not None and text.strip():
            return text.strip()
        await asyncio.sleep(POLL_S)
    raise SchedulerError(f"session {record.name}: the job did not answer the stop request within {timeout:.0f} s")


async def state(record: SessionRecord) -> SessionState:
    t = _transport(record)
    paths = record.paths
    job = await job_state(record)
    node = (await _read(t, paths.file("hostname.txt")) or "").strip()
    exit_text = await _read(t, paths.file("command.exit"))
    if exit_text is not None:
        command = f"exited {exit_text.strip()}"
    else:
        command = "running" if await _read(t, paths.file("command.pid")) else "none"
        command = "ended with the job" if command == "running" and job in TERMINAL else command
    port = None
    if command == "running" and job not in TERMINAL:
        text = await _read(t, paths.file("connection.json"))
        port = Connection.parse(text).port if text else None
    return SessionState(record, job, node, command, port)


def describe(s: SessionState) -> str:
    where = f" on {s.node}" if s.node else ""
    port = f", port {s.port}" if s.port else ""
    return (f"{s.record.name}  {s.record.preset}  job {s.record.job_id} {s.job_state}{where}  "
            f"command {s.command}{port}")
