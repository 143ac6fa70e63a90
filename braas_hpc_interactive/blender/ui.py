"""The "Interactive" panels in the 3D viewport's sidebar (tab BRaaS-HPC). Drawing only reads state that
the main thread owns (properties, `runtime.state`, `addon.panel`, `links`' snapshots); it never waits for anything."""

from __future__ import annotations

import time

import bpy

from braas_hpc.addon_kit.text import wrap_text

from ..core import launch
from . import links
from .addon import panel, runtime

STATE_ICONS = {"PENDING": "TIME", "RUNNING": "PLAY", "COMPLETED": "CHECKMARK", "FAILED": "ERROR",
               "CANCELLED": "CANCEL", "TIMEOUT": "TIME"}
OP = "braas_hpc_interactive"


def _braas_hpc_enabled(context: bpy.types.Context) -> bool:
    return any(name == "braas_hpc" or name.endswith(".braas_hpc") for name in context.preferences.addons.keys())


def _selected(context: bpy.types.Context) -> bpy.types.PropertyGroup | None:
    props = context.window_manager.braas_hpc_interactive
    if 0 <= props.active_session < len(props.sessions):
        return props.sessions[props.active_session]
    return None


def draw_status(layout: bpy.types.UILayout) -> None:
    busy = runtime.busy()
    for operation in busy[:3]:
        snap = operation.snapshot()
        layout.label(text=f"{snap.label}: {snap.stage} ({time.monotonic() - snap.started:.0f} s)", icon="SORTTIME")
    if busy:
        layout.operator(f"{OP}.abort", icon="CANCEL")
    elif runtime.state.message.text:
        icon = {"ERROR": "ERROR", "WARNING": "INFO"}.get(runtime.state.message.level, "CHECKMARK")
        column = layout.column(align=True)
        for index, line in enumerate(wrap_text(runtime.state.message.text, 48)[:5]):
            column.label(text=line, icon=icon if index == 0 else "BLANK1")


class BRAAS_HPC_INTERACTIVE_UL_sessions(bpy.types.UIList):
    def draw_item(self, context: bpy.types.Context, layout: bpy.types.UILayout, data: object,
                  item: bpy.types.PropertyGroup, icon: int, active_data: object, active_propname: str,
                  index: int = 0, flt_flag: int = 0) -> None:
        row = layout.row(align=True)
        row.label(text=item.name, icon=STATE_ICONS.get(item.job_state, "QUESTION"))
        where = f" {item.node}" if item.node else ""
        row.label(text=f"{item.preset} {item.job_state}{where}")


class SidebarPanel:
    """Where every panel of this add-on lives: the 3D viewport's sidebar, tab BRaaS-HPC."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "BRaaS-HPC"


class BRAAS_HPC_INTERACTIVE_PT_main(SidebarPanel, bpy.types.Panel):
    bl_label = "Interactive"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        if not _braas_hpc_enabled(context):
            layout.label(text="Enable the BRaaS-HPC add-on: it keeps the cluster", icon="INFO")
            layout.label(text="presets and asks for passphrases and codes", icon="BLANK1")
        draw_status(layout)


class BRAAS_HPC_INTERACTIVE_PT_session(SidebarPanel, bpy.types.Panel):
    bl_label = "Session"
    bl_parent_id = "BRAAS_HPC_INTERACTIVE_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.braas_hpc_interactive
        column = layout.column()
        column.prop(settings, "preset")
        row = column.row(align=True)
        row.prop(settings, "walltime_min")
        row.prop(settings, "gpu", toggle=True)
        column.prop(settings, "blendfile")
        column.operator(f"{OP}.start_session", icon="PLAY")
        props = context.window_manager.braas_hpc_interactive
        row = layout.row()
        row.template_list("BRAAS_HPC_INTERACTIVE_UL_sessions", "", props, "sessions", props, "active_session", rows=3)
        side = row.column(align=True)
        side.operator(f"{OP}.refresh_sessions", text="", icon="FILE_REFRESH")
        item = _selected(context)
        if item is None:
            return
        box = layout.box()
        box.label(text=f"Job {item.job_id}, {item.walltime_min} min, {'GPU' if item.gpu else 'CPU'}")
        if item.command:
            port = f", port {item.port}" if item.port else ""
            box.label(text=f"Command: {item.command}{port}")
        box.operator(f"{OP}.stop_session", icon="CANCEL")


class BRAAS_HPC_INTERACTIVE_PT_command(SidebarPanel, bpy.types.Panel):
    bl_label = "Server"
    bl_parent_id = "BRAAS_HPC_INTERACTIVE_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.braas_hpc_interactive
        layout.prop(settings, "kind")
        if settings.kind == launch.COMMAND:
            layout.prop(settings, "command")
        elif settings.kind == launch.BLENDERPHI:
            layout.prop(settings, "blenderphi")
        row = layout.row(align=True)
        row.enabled = _selected(context) is not None
        row.operator(f"{OP}.run", icon="PLAY")
        row.operator(f"{OP}.stop_command", icon="PAUSE")
        if panel.output:
            box = layout.box()
            column = box.column(align=True)
            column.scale_y = 0.7
            for line in panel.output:
                column.label(text=line[:200])


class BRAAS_HPC_INTERACTIVE_PT_viewport(SidebarPanel, bpy.types.Panel):
    bl_label = "Viewport"
    bl_parent_id = "BRAAS_HPC_INTERACTIVE_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.braas_hpc_interactive
        item = _selected(context)
        entry = links.tunnel(item.name) if item is not None else None
        row = layout.row(align=True)
        row.enabled = item is not None
        if entry is None:
            row.operator(f"{OP}.open_tunnel", icon="LINKED")
        else:
            row.label(text=f"{entry.local_end} -> {entry.node}:{entry.node_port}", icon="LINKED")
            row.operator(f"{OP}.close_tunnel", text="", icon="UNLINKED")
            if not entry.local_path:  # Windows: no Unix sockets
                layout.label(text="Open to every user of this computer (a 127.0.0.1 port)", icon="ERROR")
        layout.prop(settings, "max_samples")
        if settings.kind == launch.BLENDERPHI:
            layout.prop(settings, "script_text")
        viewing = links.view_key()
        if viewing:
            layout.label(text=f"{viewing}: {panel.link_status}", icon="VIEW3D")
            row = layout.row(align=True)
            row.operator(f"{OP}.stop_viewing", icon="CANCEL")
            row.operator(f"{OP}.show_bounds", text="Bounds", icon="CUBE")
        else:
            row = layout.row()
            row.enabled = item is not None and settings.kind != launch.COMMAND
            row.operator(f"{OP}.view", icon="SHADING_RENDERED")


CLASSES = (BRAAS_HPC_INTERACTIVE_UL_sessions, BRAAS_HPC_INTERACTIVE_PT_main, BRAAS_HPC_INTERACTIVE_PT_session,
           BRAAS_HPC_INTERACTIVE_PT_command, BRAAS_HPC_INTERACTIVE_PT_viewport)
