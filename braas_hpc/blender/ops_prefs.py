"""Operators of the preferences: the presets table and the per-cluster one-click actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import bpy
from bpy.props import EnumProperty, StringProperty

from ..core.cluster_blender import BlenderSource
from ..core.errors import BraasError, UsageError
from ..core.install import InstallReport
from ..core.probe import ProbeReport
from ..core.user_presets import catalogue, delete_user_preset, save_user_preset, user_preset_path
from ..core.workdir import Candidate
from . import activity, addon, preferences
from .addon import runtime


def _catalogue_items(_self: object, _context: object) -> list[tuple[str, str, str]]:
    global _CATALOGUE
    _CATALOGUE = [(name, name, f"Start from the built-in {name} preset") for name in catalogue()]
    return _CATALOGUE


_CATALOGUE: list[tuple[str, str, str]] = []
T = TypeVar("T")


def _select(prefs: preferences.BraasPreferences, name: str) -> None:
    preferences.sync_from_files(prefs)
    for index, item in enumerate(prefs.presets):
        if item.name == name:
            prefs.active_preset = index


class BRAAS_HPC_OT_preset_add(bpy.types.Operator):
    """Add a cluster from the catalogue; you then set your user, account and working directory"""

    bl_idname = "braas_hpc.preset_add"
    bl_label = "Add Cluster"
    bl_options = {"REGISTER", "INTERNAL"}

    base: EnumProperty(name="Cluster", items=_catalogue_items)
    name: StringProperty(name="Name", description="Empty: the catalogue name")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context: bpy.types.Context) -> set[str]:
        name = self.name.strip() or self.base
        try:
            if user_preset_path(name).exists():
                raise UsageError(f"you already have a preset named {name}; give another name")
            save_user_preset(name, {}, base=self.base)
        except BraasError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        _select(addon.preferences(), name)
        return {"FINISHED"}


class BRAAS_HPC_OT_preset_add_custom(bpy.types.Operator):
    """Add a cluster that is not in the catalogue"""

    bl_idname = "braas_hpc.preset_add_custom"
    bl_label = "Add Custom Cluster"
    bl_options = {"REGISTER", "INTERNAL"}

    name: StringProperty(name="Name", description="Lower-case letters, digits, - _ .")
    scheduler: EnumProperty(name="Scheduler", items=preferences.scheduler_items())
    host: StringProperty(name="Login host")
    user: StringProperty(name="User")
    workdir: StringProperty(name="Working directory", description="Absolute path on the cluster")

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context: bpy.types.Context) -> set[str]:
        name = self.name.strip()
        try:
            if user_preset_path(name).exists():
                raise UsageError(f"you already have a preset named {name}; give another name")
            save_user_preset(name, {"scheduler": self.scheduler, "host": self.host.strip(),
                                    "user": self.user.strip(), "workdir": self.workdir.strip()})
        except BraasError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        _select(addon.preferences(), name)
        return {"FINISHED"}


class BRAAS_HPC_OT_preset_remove(bpy.types.Operator):
    """Remove your preset (its file too); jobs already submitted with it stay in the list"""

    bl_idname = "braas_hpc.preset_remove"
    bl_label = "Remove Cluster"
    bl_options = {"REGISTER", "INTERNAL"}

    name: StringProperty(name="Name", options={"SKIP_SAVE"})

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = addon.preferences()
        name = self.name or (prefs.presets[prefs.active_preset].name if prefs.presets else "")
        try:
            delete_user_preset(name)
        except BraasError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        preferences.sync_from_files(prefs)
        return {"FINISHED"}


class BRAAS_HPC_OT_presets_reload(bpy.types.Operator):
    """Read the preset files again (after editing them by hand or with the braas-hpc CLI)"""

    bl_idname = "braas_hpc.presets_reload"
    bl_label = "Reload Presets"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        for problem in preferences.sync_from_files(addon.preferences()):
            self.report({"WARNING"}, problem)
        return {"FINISHED"}


def enabled_presets() -> list[str]:
    return [item.name for item in addon.preferences().presets if item.enabled and not item.error]


class BRAAS_HPC_OT_test_connections(bpy.types.Operator):
    """Connect to every enabled cluster at once and report what each offers"""

    bl_idname = "braas_hpc.test_connections"
    bl_label = "Test Connections"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        names = _enabled_online(self)
        if not names:
            return {"CANCELLED"}

        def show(reports: dict[str, ProbeReport | str]) -> None:
            failed = _report_each(reports, _probe_line)
            if failed and bpy.app.background:
                raise BraasError("; ".join(f"{n}: {r}" for n, r in reports.items() if isinstance(r, str)))

        def again() -> None:
            bpy.ops.braas_hpc.test_connections()

        return runtime.launch(self, "Testing connections", lambda: activity.test_presets(names), "test", show, again)


def _probe_line(report: ProbeReport) -> str:
    found = " ".join(report.commands) or "no scheduler commands"
    workdir = "writable" if report.workdir_ok else "NOT writable"
    return (f"ok: {report.node} ({report.arch}), connect {report.connect_ms:.0f} ms, {found}; "
            f"{report.workdir} {workdir}")


class BRAAS_HPC_OT_find_workdirs(bpy.types.Operator):
    """Ask every enabled cluster where jobs may go (the site's command, $SCRATCH/$WORK, documented
    places); you then choose one: nothing is set by itself"""

    bl_idname = "braas_hpc.find_workdirs"
    bl_label = "Find Working Directories"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        names = _enabled_online(self)
        if not names:
            return {"CANCELLED"}

        def show(found: dict[str, list[Candidate] | str]) -> None:
            for item in addon.preferences().presets:
                if item.name not in found:
                    continue
                item.candidates.clear()
                got = found[item.name]
                if isinstance(got, str):
                    item.report = got
                    continue
                for candidate in got:
                    entry = item.candidates.add()
                    entry.name, entry.source = candidate.path, candidate.source
                    entry.exists, entry.writable = candidate.exists, candidate.writable
                usable = sum(c.writable for c in got)
                item.report = f"{len(got)} place(s) found, {usable} writable: choose one below"
            runtime.tell(f"asked {len(found)} cluster(s) for working directories")

        def again() -> None:
            bpy.ops.braas_hpc.find_workdirs()

        return runtime.launch(self, "Finding working directories", lambda: activity.find_workdirs(names), "workdir",
                              show, again)


class BRAAS_HPC_OT_use_workdir(bpy.types.Operator):
    """Use this directory for the cluster's jobs"""

    bl_idname = "braas_hpc.use_workdir"
    bl_label = "Use"
    bl_options = {"REGISTER", "INTERNAL"}

    preset: StringProperty(options={"SKIP_SAVE"})
    path: StringProperty(options={"SKIP_SAVE"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        item = addon.preferences().presets.get(self.preset)
        if item is None or self.path not in item.candidates:
            self.report({"ERROR"}, f"{self.path!r} is not a directory found on {self.preset!r}")
            return {"CANCELLED"}
        item.workdir = self.path  # saved to the preset file, validated, by the property's update
        if item.error:
            self.report({"ERROR"}, item.error)
            return {"CANCELLED"}
        item.candidates.clear()
        return {"FINISHED"}


class BRAAS_HPC_OT_install(bpy.types.Operator):
    """Put the cluster scripts (and Blender, when a download link is set) on every enabled cluster;
    what is already there and unchanged is not sent again"""

    bl_idname = "braas_hpc.install"
    bl_label = "Install Scripts and Blender"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        prefs = addon.preferences()
        source = None
        if prefs.blender_url.strip():
            source = BlenderSource(url=prefs.blender_url.strip(), sha256=prefs.blender_sha256.strip().lower())
        names = _enabled_online(self)
        if not names:
            return {"CANCELLED"}

        def show(reports: dict[str, InstallReport | str]) -> None:
            failed = _report_each(reports, _install_line)
            if failed and bpy.app.background:
                raise BraasError("; ".join(f"{n}: {r}" for n, r in reports.items() if isinstance(r, str)))

        def again() -> None:
            bpy.ops.braas_hpc.install()

        return runtime.launch(self, "Installing", lambda: activity.install_all(names, source), "install", show, again)


def _install_line(report: InstallReport) -> str:
    scripts = (f"scripts {report.scripts.version}: " + (f"sent {len(report.scripts.uploaded)} file(s)"
                                                        if report.scripts.changed else "already installed"))
    if report.blender is None:
        return f"ok: {scripts}"
    blender = report.blender
    what = "installed" if blender.changed else "already there"
    return f"ok: {scripts}; Blender {blender.installed.version or ''} {what} in {blender.directory}"


def _report_each(reports: dict[str, T | str], line: Callable[[T], str]) -> int:
    """Each cluster's outcome under its preset; the status line sums them up. Returns the failures."""
    failed = 0
    for item in addon.preferences().presets:
        if item.name in reports:
            got = reports[item.name]
            failed += isinstance(got, str)
            item.report = got if isinstance(got, str) else line(got)
    runtime.tell(f"{len(reports)} cluster(s): {len(reports) - failed} ok, {failed} failed",
                 "WARNING" if failed else "INFO")
    return failed


def _enabled_online(operator: bpy.types.Operator) -> list[str]:
    names = enabled_presets()
    if not names:
        operator.report({"ERROR"}, "no enabled cluster preset: add one above")
    elif not bpy.app.online_access:
        operator.report({"ERROR"}, "online access is off (Preferences > System > Network)")
        return []
    return names


CLASSES = (BRAAS_HPC_OT_preset_add, BRAAS_HPC_OT_preset_add_custom, BRAAS_HPC_OT_preset_remove,
           BRAAS_HPC_OT_presets_reload, BRAAS_HPC_OT_test_connections, BRAAS_HPC_OT_find_workdirs,
           BRAAS_HPC_OT_use_workdir, BRAAS_HPC_OT_install)
