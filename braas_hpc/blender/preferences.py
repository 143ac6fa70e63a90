"""Add-on preferences: the cluster presets table and global settings.

A preset's connection settings live in the same user preset file the CLI reads
(`core.user_presets`); Blender keeps only what is the add-on's own (enabled, CPU or GPU, the last test
result). Nothing secret is a property here: passphrases and one-time codes are asked in popups and
never stored in userpref.blend.
"""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, IntProperty, StringProperty

from ..core.errors import BraasError
from ..core.presets import SSH_BACKENDS, load_preset
from ..core.schedulers import all_schedulers, scheduler_names
from ..core.user_presets import EDITABLE, read_user_values, save_user_preset, user_preset_names
from .addon import ADDON_ID

_syncing = False  # filling items from files must not write the files back


def _save(item: PresetItem, _context: bpy.types.Context) -> None:
    if _syncing:
        return
    values = {key: getattr(item, key) for key in EDITABLE if key not in ("title", "scheduler", "port")}
    values["port"] = item.port if item.port != 22 else None
    if not item.base:
        values["scheduler"] = item.scheduler
    try:
        save_user_preset(item.name, values, item.base)
        item.error = ""
    except BraasError as error:
        item.error = str(error)  # shown under the preset; its file keeps the last good values


class WorkdirCandidate(bpy.types.PropertyGroup):
    # `name` is the path on the cluster.
    source: StringProperty()  # where it came from: the site's command, $SCRATCH, a documented pattern
    exists: BoolProperty()
    writable: BoolProperty()


def scheduler_items() -> list[tuple[str, str, str]]:
    """The Scheduler choices: one per scheduler braas-hpc has (core.schedulers)."""
    return [(s.name, s.label, "") for s in all_schedulers()]


class PresetItem(bpy.types.PropertyGroup):
    # `name` (the preset's name) comes from PropertyGroup.
    base: StringProperty(name="Catalogue preset", description="The built-in preset this one starts from")
    enabled: BoolProperty(name="Enabled", default=True, description="Include in Test, Find and Install")
    device: EnumProperty(name="Device", items=[("CPU", "CPU", ""), ("GPU", "GPU", "")], default="CPU")
    scheduler: EnumProperty(name="Scheduler", items=scheduler_items(), update=_save)
    host: StringProperty(name="Host", update=_save)
    port: IntProperty(name="Port", default=22, min=1, max=65535, update=_save)
    user: StringProperty(name="User", description="Your login on the cluster", update=_save)
    key_file: StringProperty(name="Key file", subtype="FILE_PATH", update=_save,
                             description="Private key; empty: the SSH agent and your default keys")
    ssh_backend: EnumProperty(name="SSH back end", items=[(b, b, "") for b in SSH_BACKENDS], default="asyncssh",
                              update=_save)
    proxy_jump: StringProperty(name="Jump host", description="user@gateway, when the cluster is behind one",
                               update=_save)
    known_hosts: StringProperty(name="Known hosts", subtype="FILE_PATH", update=_save,
                                description="Empty: ~/.ssh/known_hosts")
    account: StringProperty(name="Account", description="Project or allocation charged for the jobs", update=_save)
    partition_cpu: StringProperty(name="CPU partition", update=_save)
    partition_gpu: StringProperty(name="GPU partition", update=_save)
    workdir: StringProperty(name="Working directory", description="Absolute path on the cluster", update=_save)
    blender: StringProperty(name="Blender on the cluster", update=_save)
    title: StringProperty(name="Title")
    error: StringProperty(name="Error")
    report: StringProperty(name="Last result")
    candidates: CollectionProperty(type=WorkdirCandidate)  # from Find Working Directories, for the user to pick


def _fill(item: PresetItem, name: str) -> None:
    preset = load_preset(name)
    own = read_user_values(name)
    item.name = name
    item.base = preset.base
    item.title = preset.title or name
    for key in ("host", "user", "key_file", "proxy_jump", "known_hosts", "account", "partition_cpu",
                "partition_gpu", "workdir", "blender"):
        # Inherited values are shown empty: typing one makes it the user's own.
        setattr(item, key, str(own.get(key, "" if preset.base else getattr(preset, key))))
    item.port = int(own.get("port", preset.port))
    item.ssh_backend = preset.ssh_backend
    if preset.scheduler in scheduler_names():
        item.scheduler = preset.scheduler


def sync_from_files(prefs: BraasPreferences) -> list[str]:
    """Rebuild the table from the user preset files; return problems (a broken file is listed, not lost)."""
    global _syncing
    problems = []
    known = {item.name: item for item in prefs.presets}
    names = user_preset_names()
    _syncing = True
    try:
        for name in names:
            item = known.get(name) or prefs.presets.add()
            try:
                _fill(item, name)
                item.error = ""
            except BraasError as error:
                item.name = name
                item.error = str(error)
                problems.append(str(error))
        for index in reversed(range(len(prefs.presets))):
            if prefs.presets[index].name not in names:
                prefs.presets.remove(index)
    finally:
        _syncing = False
    prefs.active_preset = min(prefs.active_preset, max(0, len(prefs.presets) - 1))
    return problems


def default_storage() -> str:
    return str(Path.home() / "braas-hpc")


def _follow_again(_prefs: object, _context: bpy.types.Context) -> None:
    from .jobs_list import follower

    follower.soon()  # the follower takes the new choice with it


class BraasPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    presets: CollectionProperty(type=PresetItem)
    active_preset: IntProperty(default=0)
    storage_dir: StringProperty(name="Job storage", subtype="DIR_PATH", default="",
                                description="Where downloaded frames go (a folder per job); empty: ~/braas-hpc")
    blender_version: StringProperty(name="Blender for clusters", default="4.5.4",
                                    description="The Blender version installed on clusters")
    blender_url: StringProperty(name="Download link", default="",
                                description="Where clusters download Blender from (a .tar.xz for Linux x86-64); "
                                "empty: Install puts only the scripts")
    blender_sha256: StringProperty(name="SHA-256", default="",
                                   description="The archive's SHA-256 as published next to the download; "
                                   "a download that does not match it is refused")
    catalogue_choice: StringProperty(name="Add from catalogue", default="")
    auto_download: BoolProperty(name="Download frames as they land", default=False, update=_follow_again,
                                description="While a job runs, its new frames come into its folder under Job "
                                "storage by themselves")
    notify_desktop: BoolProperty(name="Desktop notification when a job ends", default=True,
                                 description="Besides Blender's own report, where the system shows notifications")

    def storage(self) -> Path:
        return Path(bpy.path.abspath(self.storage_dir)) if self.storage_dir else Path(default_storage())

    def draw(self, context: bpy.types.Context) -> None:
        from .ui import draw_preferences

        draw_preferences(self, context, self.layout)


CLASSES = (WorkdirCandidate, PresetItem, BraasPreferences)
