"""The scene's own render settings, read from real .blend files (saved by bpy 4.5 and 5.0) without Blender."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from braas_hpc.core.errors import UsageError
from braas_hpc.core.scene_settings import (
    FORMATS,
    check_renderable,
    job_format,
    read_scene_settings,
)
from braas_hpc.core.spec import SubmitRequest, build_spec
from tests.helpers import make_sample, make_variant

# One file per output format, saved by one bpy process.
_FORMATS_SCRIPT = r"""
import json, os, sys
import bpy
out = sys.argv[-1]
bpy.ops.wm.read_factory_settings(use_empty=True)
image = bpy.context.scene.render.image_settings
for name in ("PNG", "JPEG", "OPEN_EXR", "OPEN_EXR_MULTILAYER", "TIFF", "FFMPEG", "BMP"):
    if hasattr(image, "media_type"):
        image.media_type = {"OPEN_EXR_MULTILAYER": "MULTI_LAYER_IMAGE", "FFMPEG": "VIDEO"}.get(name, "IMAGE")
    image.file_format = name
    bpy.ops.wm.save_as_mainfile(filepath=os.path.join(out, name + ".blend"), copy=True)
"""


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample(tmp_path_factory.mktemp("settings"))


def test_every_output_format_is_read_as_blender_names_it(tmp_path: Path, bpy_path: str) -> None:
    env = {**os.environ, "PYTHONPATH": bpy_path} if bpy_path else None
    done = subprocess.run([sys.executable, "-c", _FORMATS_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    read = {p.stem: read_scene_settings(p).image_format for p in tmp_path.glob("*.blend")}
    assert read == {name: name for name in (*FORMATS, "FFMPEG", "BMP")}


def test_range_format_layers_and_active_scene(sample: Path, bpy_path: str) -> None:
    version = "50" if bpy_path else "45"
    scene = make_variant(sample, sample.with_name(f"shot{version}.blend"), bpy_path, frame_start=3, frame_end=7,
                         frame_step=2, file_format="OPEN_EXR_MULTILAYER", resolution_x=64, resolution_y=36,
                         resolution_percentage=50, scene_name="Shot", compress=bool(bpy_path),
                         view_layers={"Extra": {"use": True}, "Off": {"use": False}},
                         other_scene={"name": "Other", "engine": "BLENDER_WORKBENCH", "active": False})
    settings = read_scene_settings(scene)
    assert settings.scene == "Shot" and settings.engine == "CYCLES"
    assert (settings.frame_start, settings.frame_end, settings.frame_step, settings.frames) == (3, 7, 2, "3-7:2")
    assert settings.image_format == "OPEN_EXR_MULTILAYER"
    assert settings.resolution == (64, 36) and settings.resolution_percentage == 50
    assert settings.view_layers == ("ViewLayer", "Extra")  # "Off" is not set to render

    # The scene the window shows is the one Blender renders, whichever is first in the file.
    other = make_variant(sample, sample.with_name(f"other{version}.blend"), bpy_path,
                         other_scene={"name": "Other", "engine": "CYCLES", "active": True})
    moved = read_scene_settings(other)
    assert moved.scene == "Other" and moved.frames == "50-60" and moved.image_format == "PNG"


def test_a_scene_no_job_can_render_is_refused_naming_the_setting(sample: Path) -> None:
    eevee = read_scene_settings(make_variant(sample, sample.with_name("eevee.blend"), engine="BLENDER_EEVEE_NEXT"))
    with pytest.raises(UsageError, match=r"renders with EEVEE; .*Render Properties > Render Engine to Cycles"):
        check_renderable(eevee, "eevee.blend")
    workbench = read_scene_settings(make_variant(sample, sample.with_name("wb.blend"), engine="BLENDER_WORKBENCH"))
    with pytest.raises(UsageError, match="renders with Workbench"):
        check_renderable(workbench, "wb.blend")
    dark = read_scene_settings(make_variant(sample, sample.with_name("dark.blend"),
                                            view_layers={"ViewLayer": {"use": False}}))
    with pytest.raises(UsageError, match="no view layer set to render"):
        check_renderable(dark, "dark.blend")

    stereo = read_scene_settings(make_variant(sample, sample.with_name("stereo.blend"), use_multiview=True))
    with pytest.raises(UsageError, match=r"each stereo view to a file of its own; .*Views Format to Stereo 3D"):
        check_renderable(stereo, "stereo.blend")
    check_renderable(read_scene_settings(make_variant(sample, sample.with_name("stereo3d.blend"), use_multiview=True,
                                                      views_format="STEREO_3D")), "stereo3d.blend")

    video = make_variant(sample, sample.with_name("video.blend"), file_format="FFMPEG")
    with pytest.raises(UsageError, match=r"writes FFMPEG, a video; .*Output Properties > Output > File Format"):
        job_format(read_scene_settings(video), "", "video.blend")
    assert job_format(read_scene_settings(video), "png", "video.blend") == "PNG"  # the user's choice wins
    with pytest.raises(UsageError, match="image format 'GIF' is not one of"):
        job_format(read_scene_settings(video), "GIF", "video.blend")
    # Through the request: refused before anything is written, and the CLI says so with exit code 2.
    with pytest.raises(UsageError, match="renders with EEVEE"):
        build_spec(SubmitRequest(scene=sample.with_name("eevee.blend"), preset="local"))


def test_the_request_takes_the_scenes_frames_and_format_unless_the_user_gives_them(sample: Path) -> None:
    scene = make_variant(sample, sample.with_name("jpeg.blend"), frame_start=3, frame_end=7, frame_step=2,
                         file_format="JPEG")
    spec, _ = build_spec(SubmitRequest(scene=scene, preset="local"))
    assert spec.frames == (3, 5, 7) and spec.image_format == "JPEG" and spec.extension == "jpg"
    assert spec.scene_name == "Scene" and spec.samples == 0 and spec.resolution_percentage == 0
    spec, _ = build_spec(SubmitRequest(scene=scene, preset="local", frames="4", image_format="OPEN_EXR",
                                       samples=2, resolution_percentage=25))
    assert spec.frames == (4,) and spec.image_format == "OPEN_EXR" and spec.extension == "exr"
    assert (spec.samples, spec.resolution_percentage) == (2, 25)
    with pytest.raises(UsageError, match="samples must be between 1 and"):
        build_spec(SubmitRequest(scene=scene, preset="local", samples=-3))


def test_an_unreadable_file_is_a_usage_error(sample: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.blend"
    text.write_text("not a blend file\n")
    with pytest.raises(UsageError, match="cannot read .*notes.blend as a .blend file"):
        read_scene_settings(text)
    cut = tmp_path / "cut.blend"
    data = make_variant(sample, sample.with_name("plain.blend")).read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(UsageError, match="cut.blend"):
        read_scene_settings(cut)
    empty = tmp_path / "empty.blend"
    empty.write_bytes(b"")
    with pytest.raises(UsageError, match="empty.blend"):
        read_scene_settings(empty)


def test_the_cli_refuses_an_eevee_scene_with_exit_code_2(sample: Path, user_dirs: dict[str, str]) -> None:
    scene = make_variant(sample, sample.with_name("eevee-cli.blend"), engine="BLENDER_EEVEE_NEXT")
    done = subprocess.run([sys.executable, "-m", "braas_hpc.cli", "submit", str(scene), "--preset", "karolina",
                           "--account", "dd-1", "--dry-run", "--json"], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy(), cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2 and "Render Properties > Render Engine" in done.stderr, done.stderr
    jpeg = make_variant(sample, sample.with_name("jpeg-cli.blend"), frame_start=3, frame_end=7, frame_step=2,
                        file_format="JPEG")
    done = subprocess.run([sys.executable, "-m", "braas_hpc.cli", "submit", str(jpeg), "--preset", "karolina",
                           "--account", "dd-1", "--dry-run", "--json"], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy(), cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["frames_file"] == "3\n5\n7\n"
    assert "--format JPEG --frames-file frames.txt --scene=Scene\n" in plan["script"]
    assert "--samples" not in plan["script"] and "--resolution-percentage" not in plan["script"]
