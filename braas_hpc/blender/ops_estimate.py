"""The panel's Estimate: the job's wall time and cost, and the project's balance, computed on the loop
(a calibration renders in a child Blender), shown under Submit until the settings change."""

from __future__ import annotations

import bpy

from ..core.costs import Costs
from ..core.errors import BraasError
from ..core.spec import build_spec
from . import activity, ops_jobs
from .addon import runtime

# The last estimate per scene file, with the request it was made for: drawn only while they still match.
_shown: dict[str, tuple[object, list[str], bool]] = {}


def shown_lines(settings: bpy.types.PropertyGroup) -> tuple[list[str], bool]:
    """The estimate's lines for the panel as it is now ([] when none, or the settings changed since)."""
    if bpy.data.filepath not in _shown:
        return [], False
    try:
        request = ops_jobs.submit_request(settings)
    except BraasError:
        return [], False
    key, lines, warned = _shown.get(bpy.data.filepath, (None, [], False))
    return (lines, warned) if key == request else ([], False)


class BRAAS_HPC_OT_estimate(bpy.types.Operator):
    """Estimate the job's wall time and core-, GPU- or node-hours, and read the project's allocation. With no
    earlier job of this scene, the scene is first rendered here at reduced settings (a calibration)"""

    bl_idname = "braas_hpc.estimate"
    bl_label = "Estimate"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.braas_hpc
        try:
            ops_jobs._online_or_error(settings.preset)
            request = ops_jobs.submit_request(settings)
            build_spec(request)
        except BraasError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}
        path = bpy.data.filepath

        def estimated(result: Costs) -> None:
            lines = result.lines() + [f"warning: {w}" for w in result.warnings]
            _shown[path] = (request, lines, bool(result.warnings))
            runtime.tell(". ".join(lines) or "no estimate", "WARNING" if result.warnings else "INFO")

        def again() -> None:
            bpy.ops.braas_hpc.estimate()

        return runtime.launch(self, "Estimating", lambda: activity.estimate(request), "estimate", estimated, again)


CLASSES = (BRAAS_HPC_OT_estimate,)
