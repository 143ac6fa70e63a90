"""Registering an add-on's classes and hanging its settings on Blender's types, and taking both away."""

from __future__ import annotations

from collections.abc import Sequence

import bpy
from bpy.props import PointerProperty


def register(classes: Sequence[type], name: str, scene: type, window_manager: type) -> None:
    """Register `classes`, then `Scene.<name>` (saved with the .blend) and `WindowManager.<name>` (this
    session only) as pointers to the add-on's property groups."""
    for cls in classes:
        bpy.utils.register_class(cls)
    setattr(bpy.types.Scene, name, PointerProperty(type=scene))
    setattr(bpy.types.WindowManager, name, PointerProperty(type=window_manager))


def unregister(classes: Sequence[type], name: str) -> None:
    """The reverse of `register`: the pointers first (they hold the classes), then the classes."""
    delattr(bpy.types.WindowManager, name)
    delattr(bpy.types.Scene, name)
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
