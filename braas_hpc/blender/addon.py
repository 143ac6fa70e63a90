"""This add-on's part of the toolkit: its runtime, its Abort and login popups, and its preferences.

The runtime owns the transports' login questions (its popups answer them for both add-ons) and redraws
the Render Properties panel and the preferences, where this add-on draws.
"""

from __future__ import annotations

from typing import Any

import bpy

from ..addon_kit.operators import abort_operator, login_popups
from ..addon_kit.runtime import Runtime, tag_redraw
from ..core.errors import BraasError

NAME = "braas_hpc"  # the operators' prefix and the properties on Scene and WindowManager
ADDON_ID = NAME  # the add-on's module name; register() sets the extension's ("bl_ext.<repo>.braas_hpc")


def _redraw() -> None:
    tag_redraw(("PROPERTIES", "PREFERENCES"))


# The jobs follower (jobs_list.Follower) runs while a job is active: Abort leaves it alone, the timer stays slow.
runtime = Runtime("braas-hpc", NAME, prompts=True, redraw=_redraw, lasting=("follow",), idle=("follow",))
CLASSES = (abort_operator(NAME, runtime, "Stop every running operation (upload, download, refresh); jobs "
                          "already on the cluster keep running"), *login_popups(NAME, runtime))


def preferences() -> Any:
    addon = bpy.context.preferences.addons.get(ADDON_ID)
    if addon is None or addon.preferences is None:
        # register() called by hand instead of enabling the add-on: Blender made no preferences for it.
        raise BraasError(f"enable the add-on in Preferences > Add-ons ({ADDON_ID}); its settings are missing")
    return addon.preferences
