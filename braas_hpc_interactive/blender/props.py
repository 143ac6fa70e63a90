"""What the sidebar edits (saved with the scene) and the sessions list (runtime only, from the records).
No secret is ever a property: a session's token stays in `links`, in memory."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, IntProperty, PointerProperty, StringProperty

from braas_hpc.core.presets import preset_files

from ..core import launch
from . import links

_PRESET_ITEMS: list[tuple[str, str, str]] = []


def _preset_items(_self: object, _context: object) -> list[tuple[str, str, str]]:
    # Blender keeps no reference to a dynamic enum's strings: hold them in a module global.
    global _PRESET_ITEMS
    _PRESET_ITEMS = [(name, name, f"Hold a node of the {name} cluster") for name in sorted(preset_files())
                     if name != "local"] or [("", "(no cluster preset)", "Add one in BRaaS-HPC's preferences")]
    return _PRESET_ITEMS


KIND_ITEMS = [
    (launch.BUILTIN, "Built-in Cycles server", "Stock Blender on the node runs braas-hpc's render server (token "
     "checked)"),
    (launch.BLENDERPHI, "BlenderPhi", "The BlenderPhi build in interactive mode (no authentication: anyone who "
     "can reach the node, its users, jobs and the cluster network, can connect to its port; Run asks first)"),
    (launch.COMMAND, "Command", "Your own command; it should listen on $BRAAS_PORT"),
]


def _max_samples_changed(settings: SessionSettings, _context: bpy.types.Context) -> None:
    link = links.current()  # the open link follows at once: raising the limit resumes sampling
    if link is not None:
        link.max_samples = settings.max_samples or None


class SessionSettings(bpy.types.PropertyGroup):
    preset: EnumProperty(name="Cluster", items=_preset_items, description="Where to hold a node")
    walltime_min: IntProperty(name="Walltime (min)", default=60, min=0, soft_max=2880,
                              description="How long to hold the node; 0: the partition's default")
    gpu: BoolProperty(name="GPU", default=False, description="Hold a node of the preset's GPU partition")
    blendfile: StringProperty(name="Scene on the cluster", description="Absolute path of the .blend on the "
                              "cluster; empty: Start Session packs and uploads the open scene, Run uses the session's")
    kind: EnumProperty(name="Type", items=KIND_ITEMS, description="What runs in the session")
    command: StringProperty(name="Command", description="Split like a shell would; $BRAAS_PORT, $BRAAS_HOST, "
                            "$BRAAS_TOKEN and $BRAAS_SESSION_DIR are filled in on the node")
    blenderphi: StringProperty(name="BlenderPhi", default=launch.BLENDERPHI_DEFAULT,
                               description="BlenderPhi's blender on the cluster (~/ is your home there)")
    max_samples: IntProperty(name="Max Samples", default=1024, min=0, soft_max=4096,
                             description="Stop asking the server for samples (and frames) at this count until "
                             "the view changes, as Cycles' viewport does; 0: no limit",
                             update=_max_samples_changed)
    script_text: PointerProperty(type=bpy.types.Text, name="Script",
                                 description="BlenderPhi: a text block sent to the server whenever it changes "
                                 "(BlenderPhi applies it as an XML material); the built-in server never runs it")
    previous_engine: StringProperty(name="Previous Engine", options={"HIDDEN"},
                                    description="The render engine to restore on Stop Viewing")


class SessionItem(bpy.types.PropertyGroup):
    # `name` is the session's name.
    preset: StringProperty()
    job_id: StringProperty()
    gpu: BoolProperty()
    walltime_min: IntProperty()
    job_state: StringProperty(default="?")
    node: StringProperty()
    command: StringProperty()
    port: IntProperty()


class Runtime(bpy.types.PropertyGroup):
    sessions: CollectionProperty(type=SessionItem)
    active_session: IntProperty(default=0)


CLASSES = (SessionSettings, SessionItem, Runtime)

