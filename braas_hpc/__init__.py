"""braas_hpc: Blender Rendering-as-a-Service for HPC.

As an add-on, Blender calls register()/unregister() (as an extension, through the extension's own
two-function package, which passes its module name); the bpy face (preferences, panels, operators)
lives in `braas_hpc.blender` and is imported only then. As a pip package, this module
imports nothing from Blender, so the `braas-hpc` CLI runs without it.
"""

from __future__ import annotations


def register(addon_id: str = "") -> None:
    """`addon_id`: the module name Blender knows the add-on by ("bl_ext.<repo>.braas_hpc" for the
    extension); empty when this package itself is the add-on."""
    from . import blender

    blender.register(addon_id or __name__)


def unregister() -> None:
    from . import blender

    blender.unregister()
