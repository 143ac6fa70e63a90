"""Registering an add-on's classes and hanging its settings on Blender's types, and taking both away."""

from __future__ import annotations

from collections.abc import Sequence

import bpy
from bpy.props import PointerProperty


def register(classes: Sequence[type], name: str, scene: type | None = None,
             window_manager: type | None = None) -> None:
    """Register `classes`, then `Scene.<name>` (saved with the .blend) and `WindowManager.<name>` (this
    session only) as pointers to the add-on's property groups."""
    for cls in classes:
        bpy.utils.register_class(cls)
    if scene is not None:
        setattr(bpy.types.Scene, name, PointerProperty(type=scene))
    if window_manager is not None:
        setattr(bpy.types.WindowManager, name, PointerProperty(type=window_manager))


def unregister(classes: Sequence[type], name: str, scene: bool = True, window_manager: bool = True) -> None:
    """The reverse of `register`: the pointers first (they hold the classes), then the classes."""
    if window_manager:
        delattr(bpy.types.WindowManager, name)
    if scene:
        delattr(bpy.types.Scene, name)
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
