"""braas_hpc: Blender Rendering-as-a-Service for HPC.

As a Blender extension, Blender calls register()/unregister(); the bpy face (preferences, panels,
operators) lives in `braas_hpc.blender` and is imported only then. As a pip package, this module
imports nothing from Blender, so the `braas-hpc` CLI runs without it.
"""

from __future__ import annotations


def register() -> None:
    from . import blender

    blender.register()


def unregister() -> None:
    from . import blender

    blender.unregister()
