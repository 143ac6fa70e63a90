"""The panels' draw code against Blender's real UI API. The bpy wheel has no window, so panels are never
drawn by Blender here; each draw function is called with a recording layout that checks every call
against `bpy.types.UILayout`'s real functions and parameters, every property against the data's RNA and
every operator against the registered ones. A typo that would show a red error in the panel fails here."""

from __future__ import annotations

from pathlib import Path

from tests.blender.addon_runner import Session
from tests.helpers import make_sample

RECORDER = '''
import types
class Layout:
    calls = []
    def __init__(self):
        self.use_property_split = False
        self.scale_y = 1.0
    def __getattr__(self, name):
        function = bpy.types.UILayout.bl_rna.functions.get(name)
        assert function is not None, f"UILayout has no {name}()"
        allowed = set(function.parameters.keys())
        def call(*args, **kwargs):
            unknown = set(kwargs) - allowed
            assert not unknown, f"UILayout.{name}() has no parameter(s) {unknown}"
            if name == "prop":
                data, prop = args[0], args[1]
                assert prop in data.bl_rna.properties, f"{type(data).__name__} has no property {prop}"
            if name == "operator":
                group, op = args[0].split(".")
                assert op in dir(getattr(bpy.ops, group)), f"no operator {args[0]}"
            if name == "template_list":
                assert args[3] in args[2].bl_rna.properties and args[5] in args[4].bl_rna.properties
            Layout.calls.append(name)
            if name in ("row", "column", "box", "grid_flow", "split"):
                return Layout()
            if name == "operator":
                return types.SimpleNamespace()
            return None
        return call
def panel(cls):
    return types.SimpleNamespace(layout=Layout())
'''


def test_every_panel_draws_with_the_real_ui_api(tmp_path: Path) -> None:
    scene = make_sample(tmp_path / "scene")
    got = Session(tmp_path / "user").run(prelude=RECORDER, script=f"""
        from braas_hpc.blender import ui, jobs_list, activity
        from braas_hpc.blender.addon import runtime
        from braas_hpc.addon_kit.bridge import Operation
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        bpy.ops.braas_hpc.preset_add(base="lumi")
        context = bpy.context
        for cls in (ui.BRAAS_HPC_PT_main, ui.BRAAS_HPC_PT_new_job, ui.BRAAS_HPC_PT_jobs):
            cls.draw(panel(cls), context)  # no jobs yet
        bpy.context.scene.braas_hpc.frames_mode = "CUSTOM"
        bpy.context.scene.braas_hpc.device = "GPU"
        jobs_list.apply_rows([activity.JobRow("j1", "lumi", "FAILED", 3, 5, ("123",), (4, 5), 1.7e9)])
        runtime.tell("a long message " * 20, "ERROR")
        operation = runtime.state.bridge.run("Uploading", lambda: __import__("asyncio").sleep(5))
        operation.update("uploading", 5_000_000, 300_000_000)
        for cls in (ui.BRAAS_HPC_PT_main, ui.BRAAS_HPC_PT_new_job, ui.BRAAS_HPC_PT_jobs):
            cls.draw(panel(cls), context)
        item = context.window_manager.braas_hpc.jobs[0]
        item.video = "/frames/j1/video-h264-24fps.mp4"  # a movie here: Play Movie is drawn too
        ui.BRAAS_HPC_PT_jobs.draw(panel(ui.BRAAS_HPC_PT_jobs), context)
        ui.BRAAS_HPC_UL_jobs.draw_item(None, context, Layout(), None, item, 0, None, "", 0)
        prefs_item = prefs.presets[0]
        prefs_item.report = "ok"
        for path, writable in (("/scratch/project/x", True), ("/nowhere", False)):
            candidate = prefs_item.candidates.add()
            candidate.name, candidate.source, candidate.exists, candidate.writable = path, "hint", writable, writable
        ui.BRAAS_HPC_UL_presets.draw_item(None, context, Layout(), None, prefs_item, 0, None, "", 0)
        ui.draw_preferences(prefs, context, Layout())
        operation.cancel()
        result["calls"] = sorted(set(Layout.calls))
        result["count"] = len(Layout.calls)
    """)
    for call in ("prop", "operator", "template_list", "progress", "label"):
        assert call in got["calls"]
    assert got["count"] > 60


def test_the_preset_line_says_which_facts_to_check_with_the_site(tmp_path: Path) -> None:
    """The panel shows, under the cluster choice, the preset's facts no site page confirmed."""
    scene = make_sample(tmp_path / "scene")
    got = Session(tmp_path / "user").run(prelude=RECORDER, script=f"""
        from braas_hpc.blender import ui
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        texts = []
        class Labels(Layout):
            def label(self, text="", icon="NONE", **kwargs):
                texts.append((icon, text))
        shown = {{}}
        for name in ("lumi", "polaris"):
            bpy.context.scene.braas_hpc.preset = name
            texts.clear()
            ui.BRAAS_HPC_PT_new_job.draw(types.SimpleNamespace(layout=Labels()), bpy.context)
            shown[name] = [text for icon, text in texts if icon == "QUESTION"]
        result["shown"] = shown
    """)
    lumi = " ".join(got["shown"]["lumi"])
    assert lumi.startswith("unconfirmed: check with your site:") and "modules" in lumi, got
    assert got["shown"]["polaris"] == [], got  # every Polaris fact has a source
