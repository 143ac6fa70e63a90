"""The panel's Make Movie and Play Movie in real Blender (the bpy wheel): a local job's EXR frames become
a movie with the scene's view transform, shown in the job list."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tests import video_probe as vp
from tests.blender.addon_runner import Session
from tests.helpers import make_sample


def test_make_movie_then_play_it_from_the_job_list(tmp_path: Path) -> None:
    scene = vp.movie_scene(make_sample(tmp_path / "scene"))
    session = Session(tmp_path / "user")
    got = session.run(f"""
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        settings = bpy.context.scene.braas_hpc
        settings.preset, settings.frames_mode, settings.custom_frames = "local", "CUSTOM", "1-3"
        bpy.context.scene.render.image_settings.file_format = "OPEN_EXR"
        result["submit"] = sorted(bpy.ops.braas_hpc.submit())
        try:
            result["play_before"] = sorted(bpy.ops.braas_hpc.open_video())
        except RuntimeError as error:
            result["play_before"] = str(error)
        settings = bpy.context.scene.braas_hpc
        settings.video_codec = "prores"
        result["make"] = sorted(bpy.ops.braas_hpc.make_video())
        job = bpy.context.window_manager.braas_hpc.jobs[0]
        result["video"] = job.video
        result["play"] = sorted(bpy.ops.braas_hpc.open_video())
        result["folder"] = sorted(bpy.ops.braas_hpc.open_folder())
    """)
    assert "no movie here yet" in got["play_before"]
    assert got["submit"] == ["FINISHED"] and got["make"] == ["FINISHED"] and got["play"] == ["FINISHED"]
    assert got["folder"] == ["FINISHED"]
    movie = Path(got["video"])
    assert movie.name == "video-prores-12fps.mov" and movie.parent.parent == tmp_path / "user" / "home" / "braas-hpc"
    assert vp.frame_count(movie) == 3
    # Tone-mapped as Blender shows the scene: compare with a PNG render of frame 1 by the same job's settings.
    got = session.run(f"""
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        bpy.context.scene.frame_set(1)
        bpy.context.scene.render.image_settings.file_format = "PNG"  # Submit saved the file with EXR
        bpy.context.scene.render.filepath = {str(tmp_path / "png" / "frame1.png")!r}
        bpy.ops.render.render(write_still=True)
    """)
    with Image.open(tmp_path / "png" / "frame1.png") as png:
        assert vp.mean_difference(vp.first_picture(movie), png.convert("RGB")) < vp.TOLERANCE
