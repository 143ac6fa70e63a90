"""The Blender face of braas_hpc. Panels and operators arrive with the add-on issue; for now the
extension registers nothing, so enabling it is harmless."""

from __future__ import annotations


def register() -> None:
    return None


def unregister() -> None:
    return None
