"""The panel's face of one animation over several clusters, drawn against the real UI API of Blender 4.5
and 5.0 (the recording layout of test_addon_draw): the "Also on" toggles beside the cluster, what they
choose, and a group's row in the jobs list with each cluster's share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.blender.addon_runner import Session
from tests.blender.test_addon_draw import RECORDER
from tests.helpers import bpy_site, make_sample

DRAW = '''
drawn = []  # (call, text, depress, operator) of every label and operator
class Seen(Layout):
    def __getattr__(self, name):
        call = Layout.__getattr__(self, name)
        if name in ("row", "column", "box", "grid_flow", "split"):  # a sub-layout whose calls are seen too
            return lambda *args, **kwargs: call(*args, **kwargs) and Seen()
        if name not in ("label", "operator"):
            return call
        def seen(*args, **kwargs):
            drawn.append((name, kwargs.get("text", ""), kwargs.get("depress", False),
                          args[0] if name == "operator" else ""))
            return call(*args, **kwargs)
        return seen
'''


@pytest.mark.parametrize("version", ["", "5.0.1"], ids=["blender-4.5", "blender-5.0"])
def test_also_on_toggles_and_a_group_row_draw(version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if version:
        monkeypatch.setenv("PYTHONPATH", bpy_site(version))
    scene = make_sample(tmp_path / "scene")
    got = Session(tmp_path / "user").run(prelude=RECORDER + DRAW, script=f"""
        from braas_hpc.blender import activity, jobs_list, ui
        from braas_hpc.core.fanout import Pace
        from braas_hpc.core.group import MemberStatus
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        result["version"] = bpy.app.version_string
        for base in ("lumi", "karolina", "leonardo"):
            bpy.ops.braas_hpc.preset_add(base=base)
        prefs.presets["leonardo"].enabled = False  # not offered: only enabled clusters, and this computer
        settings = bpy.context.scene.braas_hpc
        settings.preset = "lumi"
        ui.BRAAS_HPC_PT_new_job.draw(types.SimpleNamespace(layout=Seen()), bpy.context)
        result["before"] = [d[1:3] for d in drawn if d[3] == "braas_hpc.also_on"]
        result["default"] = settings.also_on
        bpy.ops.braas_hpc.also_on(preset="karolina")
        bpy.ops.braas_hpc.also_on(preset="local")
        bpy.ops.braas_hpc.also_on(preset="lumi")  # the main cluster is never also chosen
        bpy.ops.braas_hpc.also_on(preset="local")  # pressed again: left out
        result["chosen"] = settings.also_on
        drawn.clear()
        ui.BRAAS_HPC_PT_new_job.draw(types.SimpleNamespace(layout=Seen()), bpy.context)
        result["after"] = [d[1:3] for d in drawn if d[3] == "braas_hpc.also_on"]
        result["note"] = [d[1] for d in drawn if d[0] == "label" and "clusters" in d[1]]
        settings.preset = "karolina"  # the one chosen beside it becomes the cluster: one cluster again
        drawn.clear()
        ui.BRAAS_HPC_PT_new_job.draw(types.SimpleNamespace(layout=Seen()), bpy.context)
        result["same"] = [d[1] for d in drawn if d[0] == "label" and "clusters" in d[1]]
        result["same_toggles"] = sorted(d[1:3] for d in drawn if d[3] == "braas_hpc.also_on")
        settings.preset = "lumi"
        members = (MemberStatus("lumi", "g-1.lumi", "RUNNING", 5, 2, Pace(12.5, 4, 30.0)),
                   MemberStatus("karolina", "g-1.karolina", "PENDING", 0, 3, Pace()))
        row = activity.JobRow("g-1", "lumi + karolina", "RUNNING", 5, 20, (), (), 1.7e9, group=True,
                              members=members, pool=10, moves=("karolina got frames 9-11",))
        jobs_list.apply_rows([row])
        drawn.clear()
        ui.BRAAS_HPC_PT_jobs.draw(types.SimpleNamespace(layout=Seen()), bpy.context)
        ui.BRAAS_HPC_UL_jobs.draw_item(None, bpy.context, Seen(), None, bpy.context.window_manager.braas_hpc.jobs[0],
                                       0, None, "", 0)
        result["group"] = [d[1] for d in drawn if d[0] == "label"]
        result["operators"] = [d[3] for d in drawn if d[0] == "operator"]
    """)
    assert got["version"].startswith(version[:3] if version else "4.5"), got["version"]
    assert got["default"] == ""  # one cluster, as before
    assert sorted(got["before"]) == [["karolina", False], ["local", False]]
    assert got["chosen"] == "karolina"
    assert sorted(got["after"]) == [["karolina", True], ["local", False]]
    assert got["note"] == ["One job over 2 clusters: frames go where they render soonest"]
    assert got["same"] == [] and got["same_toggles"] == [["local", False], ["lumi", False]], got
    shown = got["group"]
    assert "g-1 over 2 clusters: RUNNING" in shown
    assert "lumi: running, rendered 5, holds 2 (12.5 s/frame, 4 at once)" in shown, shown
    assert "karolina: pending, rendered 0, holds 3 (pace not measured yet)" in shown, shown
    assert any(text.startswith("10 frame(s) not handed out yet") for text in shown), shown
    assert "Last moves: karolina got frames 9-11" in shown
    assert "lumi + karolina" in shown
    # Download, Make Movie, Open Folder, Info, Cancel and Remove act on the group; no Resubmit.
    assert sorted(got["operators"]) == ["braas_hpc." + name for name in (
        "cancel_job", "download_job", "job_info", "make_video", "open_folder", "refresh_jobs", "remove_job")], \
        got["operators"]
