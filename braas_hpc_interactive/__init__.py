"""braas_hpc_interactive: interactive sessions on compute nodes, tunnels and a remote Cycles viewport.

As a Blender add-on, Blender calls register()/unregister() (as an extension, through the extension's
own two-function package); the bpy face (sidebar panels, operators,
the viewport engine) lives in `braas_hpc_interactive.blender` and is imported only then. As a pip
package, this module imports nothing from Blender, so the `braas-hpc interactive` CLI runs without it.
"""

from __future__ import annotations


def register(addon_id: str = "") -> None:
    """`addon_id`: the extension's module name when installed as one (this add-on has no preferences)."""
    from . import blender

    blender.register()


def unregister() -> None:
    from . import blender

    blender.unregister()
