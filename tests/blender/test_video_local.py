"""Movies made on this computer (`braas-hpc video` of jobs of the `local` preset): real Cycles frames, the
ffmpeg imageio-ffmpeg ships, EXR frames tone-mapped by real Blender (the bpy module)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

from braas_hpc.cli_json import SCHEMAS
from tests import video_probe as vp
from tests.conftest import run_cli
from tests.helpers import bpy_site, make_sample


def _render(scene: Path, image_format: str) -> tuple[str, Path]:
    done = run_cli("render", str(scene), "--frames", "1-3", "--chunk", "3", "--format", image_format, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    return result["job"], Path(result["frames_dir"])


def _video(job: str, dest: Path, *args: str) -> dict:
    done = run_cli("video", job, "--dest", str(dest), "--json", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)
    jsonschema.validate(document, SCHEMAS["video"])  # the --json contract (docs/json.md)
    return document


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_movies_of_png_and_exr_frames(user_dirs: dict[str, str], tmp_path: Path) -> None:
    scene = vp.movie_scene(make_sample(tmp_path / "project"))
    png_job, _ = _render(scene, "PNG")
    exr_job, _ = _render(scene, "OPEN_EXR")
    pngs, exrs = tmp_path / "png", tmp_path / "exr"

    made = _video(png_job, pngs)  # h264 by default, at the scene's rate
    assert made["made_on"] == "here" and made["encoder"] == "libx264" and made["fps"] == vp.FPS
    assert made["frames_downloaded"] == 3 and made["gaps"] == []
    movie = Path(made["video"])
    assert movie == pngs / "video-h264-12fps.mp4"
    assert vp.frame_count(movie) == 3
    assert vp.stream_info(movie) == ("h264", vp.SIZE[0] + 1, vp.SIZE[1] + 1, "12")
    with Image.open(pngs / "frame_000001.png") as first_png:
        blender_png = first_png.convert("RGB")
    assert blender_png.size == vp.SIZE
    assert vp.mean_difference(vp.first_picture(movie), blender_png) < vp.TOLERANCE

    # The EXR job's movie shows the scene's view transform (AgX, Punchy, +0.7 EV): what Blender itself
    # wrote as PNG for the same frame, and far from the EXR's values shown as they are.
    for codec, encoder in (("prores", "prores_ks"), ("av1", "libaom-av1")):
        made = _video(exr_job, exrs, "--codec", codec, "--fps", "25")
        movie = Path(made["video"])
        container = "mov" if codec == "prores" else "mp4"
        assert made["encoder"] == encoder and movie.name == f"video-{codec}-25fps.{container}"
        assert vp.frame_count(movie) == 3
        assert vp.stream_info(movie) == (codec, vp.SIZE[0] + 1, vp.SIZE[1] + 1, "25")
        assert vp.mean_difference(vp.first_picture(movie), blender_png) < vp.TOLERANCE, codec
    assert vp.mean_difference(vp.exr_as_is(exrs / "frame_000001.exr"), blender_png) > 4 * vp.TOLERANCE
    assert _leftovers(pngs) == [] and _leftovers(exrs) == []  # no temp file, no work folder


def test_missing_frames_refused_with_their_list_or_shown_with_allow_gaps(user_dirs: dict[str, str],
                                                                         tmp_path: Path) -> None:
    scene = vp.movie_scene(make_sample(tmp_path / "project"))
    job, out = _render(scene, "PNG")
    (out / "frame_000002.png").unlink()  # lost on the "cluster" (this computer's job folder)
    dest = tmp_path / "frames"

    refused = run_cli("video", job, "--dest", str(dest))
    assert refused.returncode == 1
    assert "1 frame(s) missing: 2;" in refused.stderr and "--allow-gaps" in refused.stderr, refused.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["frame_000001.png", "frame_000003.png"]  # nothing half-made

    made = _video(job, dest, "--allow-gaps")
    assert made["gaps"] == [2] and vp.frame_count(Path(made["video"])) == 3  # frame 1 shown twice: timing holds
    assert _leftovers(dest) == []


def test_bad_requests_are_refused_before_anything_is_fetched(user_dirs: dict[str, str], tmp_path: Path) -> None:
    dest = tmp_path / "never"
    for args, said in ((["no-such-job"], "no-such-job"), (["any", "--fps", "0"], "frame rate"),
                       (["any", "--fps", "5000"], "frame rate"), (["any", "--codec", "vp9"], "invalid choice")):
        done = run_cli("video", *args, "--dest", str(dest))
        assert done.returncode == 2 and said in done.stderr, (args, done.stderr)
    assert not dest.exists()


def test_blender_5_tone_maps_exr_frames_as_blender_4_5_renders_them(user_dirs: dict[str, str], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    scene = vp.movie_scene(make_sample(tmp_path / "project"))
    png_job, pngs = _render(scene, "PNG")
    exr_job, _ = _render(scene, "OPEN_EXR")
    launcher = Path(__file__).resolve().parents[2] / "braas_hpc" / "bpy_blender.py"
    blender5 = ["env", f"PYTHONPATH={bpy_site('5.0.1')}", sys.executable]
    said = subprocess.run([*blender5, "-c", "import bpy; print(bpy.app.version_string)"], capture_output=True,
                          text=True, timeout=120).stdout
    assert said.startswith("5.0"), said
    monkeypatch.setenv("BRAAS_HPC_BLENDER", " ".join([*blender5, str(launcher)]))
    made = _video(exr_job, tmp_path / "exr")
    with Image.open(pngs / "frame_000001.png") as png:
        assert vp.mean_difference(vp.first_picture(Path(made["video"])), png.convert("RGB")) < vp.TOLERANCE
