"""Operators of the sidebar, under `bpy.ops.braas_hpc_interactive`.

Each reads bpy on the main thread, hands the network work to the add-on's loop and returns; in
background mode it runs to completion and a failure raises (RuntimeError) with the panel's message.
Session operators take `session="NAME"` (empty: the session selected in the list).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, StringProperty

from braas_hpc.core import progress
from braas_hpc.core.errors import BraasError, UsageError

from ..core import launch, session
from ..core.records import SessionRecord, all_records, load_record
from ..core.tunnel import TCP_WARNING, for_session
from . import engine, links, sessions_list
from .addon import runtime


def _online_or_error() -> None:
    if not bpy.app.online_access:
        raise UsageError("online access is off (Preferences > System > Network): interactive sessions need it "
                         "to reach the cluster")


class SessionOperator(bpy.types.Operator):
    """Shared by the operators that act on one session (the selected one, or `session`)."""

    bl_options = {"REGISTER", "INTERNAL"}
    session: StringProperty(name="Session", description="Session name; empty: the one selected in the list",
                            options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            name = self.session or sessions_list.selected_name()
            if not name:
                raise UsageError("no interactive session selected: start one with Start Session")
            record = load_record(name)
            _online_or_error()
            return self.start(context, record)
        except BraasError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}

    def start(self, context: bpy.types.Context, record: SessionRecord) -> set[str]:
        raise NotImplementedError


# ---- coroutines run on the loop (no bpy)


async def _wait_ready(record: SessionRecord) -> str:
    progress.report(f"waiting for a node (job {record.job_id})")
    return await session.wait_ready(record)


async def _states(records: list[SessionRecord]) -> tuple[list[session.SessionState], list[str]]:
    results = await asyncio.gather(*(session.state(r) for r in records), return_exceptions=True)
    states = [r for r in results if isinstance(r, session.SessionState)]
    problems = [f"{rec.name}: {runtime.describe(r)}" for rec, r in zip(records, results, strict=True)
                if isinstance(r, BaseException)]
    return states, problems


async def _run(record: SessionRecord, kind: str, blendfile: str, command: str, blenderphi: str,
               open_port_ok: bool) -> None:
    await links.close_tunnel(record.name)  # the new command gets a port of its own
    await session.start_server(record, kind, blendfile=blendfile, command=command, blenderphi=blenderphi,
                               open_port_ok=open_port_ok)


async def _follow(record: SessionRecord) -> None:
    async for line in session.follow(record):
        links.output.append(f"! {line.text}" if line.stderr else line.text)
    status = await session.exit_status(record)
    links.output.append(f"[command ended: exit status {status}]")


async def _ensure_tunnel(record: SessionRecord) -> links.TunnelEntry:
    entry = links.tunnel(record.name)
    if entry is not None:
        return entry
    progress.report("reading the connection file")
    status = await session.exit_status(record)
    if status is not None:  # its connection file is left over: nothing listens there any more
        raise UsageError(f"the command in {record.name} has ended (exit status {status}); Run it again")
    conn = await session.connection(record, timeout=15)
    progress.report(f"opening a tunnel to {conn.host}:{conn.port}")
    tunnel = for_session(record.preset, record.ssh_backend, conn.host, conn.port,
                         on_event=lambda text: links.output.append(f"[{text}]"), name=record.name)
    local_port = await tunnel.open()
    if tunnel.local_path is None:
        links.output.append(f"[{TCP_WARNING}]")
    entry = links.TunnelEntry(tunnel, local_port, conn.host, conn.port, conn.token, tunnel.local_path or "")
    previous = links.add_tunnel(record.name, entry)
    if previous is not None:  # two opens raced: keep one
        await previous.tunnel.close()
    return entry


async def _stop(record: SessionRecord, keep_job: bool) -> str:
    await links.close_tunnel(record.name)
    return await session.stop(record, keep_job=keep_job)


# ---- main-thread helpers


def _refresh_later(names: list[str] | None = None) -> None:
    """Ask the cluster for the listed sessions' states (all recorded ones by default) on the loop."""
    records = [r for r in all_records() if names is None or r.name in names]
    if not records or not bpy.app.online_access:
        return

    def finished(operation: Any) -> None:
        if operation.finished and not operation.cancelled and operation.error() is None:
            states, problems = operation.result()
            sessions_list.remember(states)
            if problems:
                runtime.tell("; ".join(problems), "WARNING")

    links.loop.run("Refreshing sessions", lambda: _states(records), kind="refresh", on_done=finished)


def _follow_output(record: SessionRecord) -> None:
    for operation in links.loop.active("follow"):
        operation.cancel()
    links.output.clear()
    links.loop.run(f"Output of {record.name}", lambda: _follow(record), kind="follow")


def _stop_following() -> None:
    for operation in links.loop.active("follow"):
        operation.cancel()


def _stop_viewing_session(name: str) -> None:
    if links.view_key() == name:
        engine.stop_viewing()


# ---- operators


def _saved_scene() -> Path:
    """The open .blend, saved first when it has unsaved changes (as Submit does): the session renders
    what the user sees, packed and uploaded."""
    if not bpy.data.filepath:
        raise UsageError("save the scene first (or give the path of a .blend already on the cluster)")
    if bpy.data.is_dirty:
        bpy.ops.wm.save_mainfile()
    return Path(bpy.data.filepath)


class BRAAS_HPC_INTERACTIVE_OT_start_session(bpy.types.Operator):
    """Submit a job that holds a compute node for the walltime, and wait for the node"""

    bl_idname = "braas_hpc_interactive.start_session"
    bl_label = "Start Session"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.braas_hpc_interactive
        preset, walltime, gpu = settings.preset, settings.walltime_min or None, settings.gpu
        blendfile = settings.blendfile.strip()
        try:
            if not preset:
                raise UsageError("no cluster preset: add one in BRaaS-HPC's preferences")
            _online_or_error()
            scene = None if blendfile else _saved_scene()
        except BraasError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}

        label = f"Starting a session on {preset}"

        def listed(record: SessionRecord) -> None:
            sessions_list.show(all_records())
            sessions_list.select(record.name)

        def ready(record: SessionRecord, node: str) -> None:
            runtime.tell(f"session {record.name} holds {node} (job {record.job_id})")
            _refresh_later([record.name])

        if bpy.app.background:  # a script gets the node, or the reason there is none, when this returns
            async def start_and_wait() -> tuple[SessionRecord, str]:
                record = await session.start(preset, walltime, gpu, blendfile, scene=scene)
                return record, await _wait_ready(record)

            def done(result: tuple[SessionRecord, str]) -> None:
                listed(result[0])
                ready(*result)

            return runtime.launch(self, label, start_and_wait, "start", done)

        def submitted(record: SessionRecord) -> None:  # listed at once; the wait for the node can be long
            listed(record)
            runtime.launch(None, f"Waiting for a node for {record.name}", lambda: _wait_ready(record), "start",
                           lambda node: ready(record, node))

        return runtime.launch(self, label, lambda: session.start(preset, walltime, gpu, blendfile, scene=scene),
                              "start", submitted)


class BRAAS_HPC_INTERACTIVE_OT_wait_session(SessionOperator):
    """Wait until the session's job runs on a node"""

    bl_idname = "braas_hpc_interactive.wait_session"
    bl_label = "Wait for Node"

    def start(self, context: bpy.types.Context, record: SessionRecord) -> set[str]:
        return runtime.launch(self, f"Waiting for a node for {record.name}", lambda: _wait_ready(record), "start",
                              lambda node: runtime.tell(f"session {record.name} holds {node}"))


class BRAAS_HPC_INTERACTIVE_OT_stop_session(SessionOperator):
    """End the session's command and cancel its job (the node is released)"""

    bl_idname = "braas_hpc_interactive.stop_session"
    bl_label = "Stop Session"

    def start(self, context: bpy.types.Context, record: SessionRecord) -> set[str]:
        _stop_viewing_session(record.name)
        _stop_following()

        def stopped(result: str) -> None:
            sessions_list.forget(record.name)
            runtime.tell(f"{record.name}: command {result}; job {record.job_id} cancelled")

        return runtime.launch(self, f"Stopping {record.name}", lambda: _stop(record, keep_job=False), "stop",
                              stopped)


class BRAAS_HPC_INTERACTIVE_OT_refresh_sessions(bpy.types.Operator):
    """Ask the clusters for the state of every session in the list"""

    bl_idname = "braas_hpc_interactive.refresh_sessions"
    bl_label = "Refresh Sessions"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        records = all_records()
        sessions_list.show(records)
        if not records:
            return {"FINISHED"}
        try:
            _online_or_error()
        except BraasError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}

        def refreshed(result: tuple[list[session.SessionState], list[str]]) -> None:
            states, problems = result
            sessions_list.remember(states)
            if problems:
                runtime.tell("; ".join(problems), "WARNING")

        return runtime.launch(self, "Refreshing sessions", lambda: _states(records), "refresh", refreshed)


class BRAAS_HPC_INTERACTIVE_OT_run(SessionOperator):
    """Start the chosen server (or your command) inside the session and follow its output"""

    bl_idname = "braas_hpc_interactive.run"
    bl_label = "Run"

    open_port_ok: BoolProperty(name="Open Port Confirmed", description="BlenderPhi: the user agreed that its "
                               "port is open to everyone who can reach the node", options={"SKIP_SAVE", "HIDDEN"})

    def invoke(self, context: bpy.types.Context, event: Any) -> set[str]:
        if context.scene.braas_hpc_interactive.kind != launch.BLENDERPHI:
            return self.execute(context)
        self.open_port_ok = True  # execute runs only if the user confirms the popup
        return context.window_manager.invoke_confirm(self, event, title="Start BlenderPhi with an open port?",
                                                     message=launch.BLENDERPHI_EXPOSURE, confirm_text="Start",
                                                     icon="WARNING")

    def start(self, context: bpy.types.Context, record: SessionRecord) -> set[str]:
        settings = context.scene.braas_hpc_interactive
        kind, command, blenderphi = settings.kind, settings.command, settings.blenderphi.strip()
        blendfile, open_port_ok = settings.blendfile.strip(), self.open_port_ok
        launch.require_open_port_ok(kind, open_port_ok, how="confirm the popup of Run")
        if kind == launch.COMMAND:
            launch.command_argv(command)  # a typo is reported now, not after connecting
        _stop_viewing_session(record.name)

        def started(_result: None) -> None:
            runtime.tell(f"{record.name}: running")
            _follow_output(record)
            _refresh_later([record.name])

        return runtime.launch(self, f"Running in {record.name}",
                              lambda: _run(record, kind, blendfile, command, blenderphi, open_port_ok), "run",
                              started)


class BRAAS_HPC_INTERACTIVE_OT_stop_command(SessionOperator):
    """End the command running in the session; the session keeps its node"""

    bl_idname = "braas_hpc_interactive.stop_command"
    bl_label = "Stop Command"

    def start(self, context: bpy.types.Context, record: SessionRecord) -> set[str]:
        _stop_viewing_session(record.name)

        def stopped(result: str) -> None:
            _stop_following()
            runtime.tell(f"{record.name}: command {result}")
            _refresh_later([record.name])

        return runtime.launch(self, f"Stopping the command of {record.name}", lambda: _stop(record, keep_job=True),
                              "stop", stopped)


class BRAAS_HPC_INTERACTIVE_OT_open_tunnel(SessionOperator):
    """Forward a private local socket (a 127.0.0.1 port on Windows) to the command's port on the node"""

    bl_idname = "braas_hpc_interactive.open_tunnel"
    bl_label = "Open Tunnel"

    def start(self, context: bpy.types.Context, record: SessionRecord) -> set[str]:
        def opened(entry: links.TunnelEntry) -> None:
            runtime.tell(f"{entry.local_path or entry.local_end} -> {entry.node}:{entry.node_port}")

        return runtime.launch(self, f"Opening a tunnel to {record.name}", lambda: _ensure_tunnel(record), "tunnel",
                              opened)


class BRAAS_HPC_INTERACTIVE_OT_close_tunnel(SessionOperator):
    """Close the session's tunnel (and the viewport link through it)"""

    bl_idname = "braas_hpc_interactive.close_tunnel"
    bl_label = "Close Tunnel"

    def execute(self, context: bpy.types.Context) -> set[str]:  # no cluster involved: works offline
        name = self.session or sessions_list.selected_name()
        if not name or links.tunnel(name) is None:
            self.report({"ERROR"}, f"no tunnel open{f' for {name}' if name else ''}")
            return {"CANCELLED"}
        _stop_viewing_session(name)
        return runtime.launch(self, f"Closing the tunnel of {name}", lambda: links.close_tunnel(name), "tunnel")


class BRAAS_HPC_INTERACTIVE_OT_view(SessionOperator):
    """Show the session's render server in this 3D view (opens the tunnel first if needed)"""

    bl_idname = "braas_hpc_interactive.view"
    bl_label = "View in Viewport"

    def start(self, context: bpy.types.Context, record: SessionRecord) -> set[str]:
        settings = context.scene.braas_hpc_interactive
        if settings.kind == launch.COMMAND:
            self.report({"ERROR"}, "View in Viewport needs a render server (Built-in or BlenderPhi); a command's "
                        "port is reached through Open Tunnel")
            return {"CANCELLED"}
        use_token, max_samples = settings.kind == launch.BUILTIN, settings.max_samples
        scene_name = context.scene.name
        area = context.area
        region = next((r for r in area.regions if r.type == "WINDOW"), None) if area and area.type == "VIEW_3D" \
            else None
        owner = region.as_pointer() if region is not None else 0

        def connected(entry: links.TunnelEntry) -> None:
            scene = bpy.data.scenes.get(scene_name)
            if scene is None:
                return
            host, port = entry.address
            engine.start_viewing(scene, host, port, entry.token if use_token else None, record.name, max_samples,
                                 owner)
            runtime.tell(f"viewing {record.name} through the tunnel ({entry.local_end})")

        return runtime.launch(self, f"Connecting the viewport to {record.name}", lambda: _ensure_tunnel(record),
                              "tunnel", connected)


class BRAAS_HPC_INTERACTIVE_OT_stop_viewing(bpy.types.Operator):
    """Disconnect the viewport and restore the scene's render engine"""

    bl_idname = "braas_hpc_interactive.stop_viewing"
    bl_label = "Stop Viewing"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        if not engine.stop_viewing(wait=bpy.app.background):
            self.report({"WARNING"}, "the viewport was not showing a remote view")
        return {"FINISHED"}


BOUNDS_OBJECT = "BRaaS-HPC Remote Bounds"


class BRAAS_HPC_INTERACTIVE_OT_show_bounds(bpy.types.Operator):
    """Show the bounds of the scene the render server renders as a box (an empty), to find your way
    around a remote scene the open file does not hold"""

    bl_idname = "braas_hpc_interactive.show_bounds"
    bl_label = "Show Remote Bounds"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        _serial, frame = links.latest()
        if frame is None:
            self.report({"ERROR"}, "no frame from a render server yet: View in Viewport first")
            return {"CANCELLED"}
        lower, upper = frame.state.bounds_lower, frame.state.bounds_upper
        if not all(low <= high for low, high in zip(lower, upper, strict=True)) or lower == upper:
            self.report({"ERROR"}, "the render server reports no scene bounds")
            return {"CANCELLED"}
        box = bpy.data.objects.get(BOUNDS_OBJECT)
        if box is None:
            box = bpy.data.objects.new(BOUNDS_OBJECT, None)
            box.empty_display_type = "CUBE"
        if box.name not in context.scene.collection.all_objects:
            context.scene.collection.objects.link(box)
        box.location = [(low + high) / 2 for low, high in zip(lower, upper, strict=True)]
        box.scale = [max((high - low) / 2, 1e-4) for low, high in zip(lower, upper, strict=True)]  # a flat scene
        runtime.tell(f"remote scene bounds: {tuple(round(v, 3) for v in lower)} to {tuple(round(v, 3) for v in upper)}")
        return {"FINISHED"}


CLASSES = (
    BRAAS_HPC_INTERACTIVE_OT_start_session, BRAAS_HPC_INTERACTIVE_OT_wait_session,
    BRAAS_HPC_INTERACTIVE_OT_stop_session, BRAAS_HPC_INTERACTIVE_OT_refresh_sessions, BRAAS_HPC_INTERACTIVE_OT_run,
    BRAAS_HPC_INTERACTIVE_OT_stop_command, BRAAS_HPC_INTERACTIVE_OT_open_tunnel,
    BRAAS_HPC_INTERACTIVE_OT_close_tunnel, BRAAS_HPC_INTERACTIVE_OT_view, BRAAS_HPC_INTERACTIVE_OT_stop_viewing,
    BRAAS_HPC_INTERACTIVE_OT_show_bounds,
)
