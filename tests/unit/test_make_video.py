"""Movies of frames: the cluster script's choices (encoders, gaps, names), what a job records for them,
the preset's ffmpeg and the finish step that uses it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from braas_hpc.core import video
from braas_hpc.core.errors import PresetError, UsageError
from braas_hpc.core.jobs import VIDEO_FILE, JobPaths
from braas_hpc.core.presets import preset_from_dict
from braas_hpc.core.scene_settings import read_scene_settings
from braas_hpc.core.schedulers import scheduler_for
from braas_hpc.core.schedulers.base import FINISH_WALLTIME_MIN, Round
from braas_hpc.core.spec import SubmitRequest, build_spec
from tests import video_probe as vp
from tests.helpers import make_sample

mv = video.make_video_module()


def _fake_ffmpeg(tmp_path: Path, encoders: list[str]) -> str:
    """An `ffmpeg` that lists only these video encoders, and fails at encoding after writing half a file."""
    listed = "".join(f" V....D {name:20} what it is\\n" for name in encoders)
    script = tmp_path / "ffmpeg"
    script.write_text(f'#!/bin/sh\nif [ "$2" = "-encoders" ]; then printf "Encoders:\\n{listed}"; exit 0; fi\n'
                      'for last; do :; done; echo half > "$last"\n'
                      'echo "this stand-in encodes nothing" >&2; exit 1\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def _frames(directory: Path, frames: list[int], extension: str = "png") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for frame in frames:
        (directory / f"frame_{frame:06d}.{extension}").write_bytes(b"not empty")


def test_a_codec_this_ffmpeg_cannot_encode_is_named_with_the_encoders_it_would_take(tmp_path: Path) -> None:
    _frames(tmp_path / "out", [1, 2])
    ffmpeg = _fake_ffmpeg(tmp_path, ["libx264", "prores_ks"])
    with pytest.raises(mv.VideoError, match="cannot encode av1: it has none of the encoders libsvtav1, libaom-av1, "
                                            "librav1e"):
        mv.make_video(str(tmp_path / "out"), [1, 2], "png", "av1", 24, [ffmpeg], str(tmp_path / "out" / "v.mp4"))
    assert mv.pick_encoder("av1", {"libaom-av1", "libsvtav1"}) == "libsvtav1"  # the faster one first
    assert mv.pick_encoder("av1", set(mv.encoders([vp.FFMPEG]))) == "libaom-av1"  # imageio-ffmpeg's build
    # A failing encode leaves no temp file and no work folder.
    with pytest.raises(mv.VideoError, match="this stand-in encodes nothing"):
        mv.make_video(str(tmp_path / "out"), [1, 2], "png", "h264", 24, [ffmpeg], str(tmp_path / "out" / "v.mp4"))
    assert sorted(os.listdir(tmp_path / "out")) == ["frame_000001.png", "frame_000002.png"]


def test_an_ffmpeg_that_is_not_there_is_named(tmp_path: Path) -> None:
    _frames(tmp_path, [1])
    with pytest.raises(mv.VideoError, match="cannot run ffmpeg .*/nowhere/ffmpeg"):
        mv.make_video(str(tmp_path), [1], "png", "h264", 24, ["/nowhere/ffmpeg"], str(tmp_path / "v.mp4"))


def test_the_movie_takes_the_jobs_frames_in_order_and_gaps_only_when_allowed(tmp_path: Path) -> None:
    _frames(tmp_path, [3, 7, 9])
    frames = [1, 3, 5, 7, 9]  # a job of every second frame, 1 and 5 lost
    with pytest.raises(mv.VideoError, match=r"2 frame\(s\) missing: 1, 5;"):
        mv.sequence(str(tmp_path), frames, "png", allow_gaps=False)
    files, missing = mv.sequence(str(tmp_path), frames, "png", allow_gaps=True)
    assert missing == [1, 5]
    assert [Path(f).name for f in files] == ["frame_000003.png", "frame_000003.png", "frame_000003.png",
                                             "frame_000007.png", "frame_000009.png"]
    many = list(range(1, 40))
    with pytest.raises(mv.VideoError, match=r"36 frame\(s\) missing: 1, 2, 4, .* 22, 23 and 16 more"):
        mv.sequence(str(tmp_path), many, "png", allow_gaps=False)
    with pytest.raises(mv.VideoError, match="no frame of the job is in"):
        mv.sequence(str(tmp_path), [1], "exr", allow_gaps=True)


def test_names_rates_and_requests() -> None:
    for codec, fps, name in (("h264", 24, "video-h264-24fps.mp4"), ("prores", 29.97, "video-prores-29.97fps.mov"),
                             ("av1", 12.5, "video-av1-12.5fps.mp4")):
        assert mv.video_file_name(codec, fps) == name and VIDEO_FILE.match(name)
    assert not VIDEO_FILE.match("video-h264-24fps.mp4.part") and not VIDEO_FILE.match(".video-h264-24fps.mp4")
    assert mv.rate(24) == "24" and mv.rate(30000 / 1001) == "30000/1001" and mv.rate(12.5) == "25/2"
    for codec, fps, said in (("vp9", 24, "codec 'vp9'"), ("h264", 0, "frame rate"), ("h264", 1001, "frame rate")):
        with pytest.raises(UsageError, match=said):
            video.check_request(codec, fps)


def test_every_job_records_the_scenes_rate_and_colour_management(tmp_path: Path, bpy_path: str) -> None:
    scene = vp.movie_scene(make_sample(tmp_path / "project"), bpy_path)
    settings = read_scene_settings(scene)
    assert settings.fps == vp.FPS and settings.view_transform == "AgX" and settings.exposure == 0.7
    assert settings.look == "AgX - Punchy" and settings.gamma == 1.0 and settings.display_device == "sRGB"
    spec, _ = build_spec(SubmitRequest(scene=scene, preset="local"))
    assert (spec.fps, spec.view_transform, spec.look, spec.exposure, spec.video) == (12, "AgX", settings.look, 0.7, "")
    spec, _ = build_spec(SubmitRequest(scene=scene, preset="local", fps=25))
    assert spec.fps == 25
    with pytest.raises(UsageError, match="preset local names no ffmpeg"):
        build_spec(SubmitRequest(scene=scene, preset="local", video="h264"))


_BASE = {"name": "site", "scheduler": "slurm", "host": "login.example.org", "workdir": "/scratch/me"}


def test_the_presets_ffmpeg_is_a_path_or_a_command_name() -> None:
    assert preset_from_dict({**_BASE, "ffmpeg": "/apps/ffmpeg/7.0/bin/ffmpeg"}, "x").ffmpeg.endswith("/ffmpeg")
    with_module = preset_from_dict({**_BASE, "ffmpeg": "ffmpeg", "ffmpeg_env": ["module load FFmpeg/7.0"]}, "x")
    assert with_module.ffmpeg_env == ("module load FFmpeg/7.0",)
    for bad, said in (({"ffmpeg": "ffmpeg; rm -rf ~"}, "absolute path"), ({"ffmpeg": "bin/ffmpeg"}, "absolute path"),
                      ({"ffmpeg_env": ["module load FFmpeg"]}, "ffmpeg is not"),
                      ({"ffmpeg": "ffmpeg", "ffmpeg_env": ["ml a\nrm x"]}, "single lines"),
                      ({"ffmpeg": 7}, "must be of type str")):
        with pytest.raises(PresetError, match=said):
            preset_from_dict({**_BASE, **bad}, "x")


def test_the_finish_step_makes_the_movie_only_when_asked_and_the_preset_has_ffmpeg(tmp_path: Path) -> None:
    scene = vp.movie_scene(make_sample(tmp_path / "project"))
    preset = preset_from_dict({**_BASE, "ffmpeg": "ffmpeg", "ffmpeg_env": ["module load FFmpeg/7.0"],
                               "partition_cpu": "cpu", "partitions": {"cpu": {"kind": "cpu"}}}, "x")
    spec, _ = build_spec(SubmitRequest(scene=scene, preset="local", frames="1-600"))
    paths = JobPaths("/scratch/me/braas-hpc-me", spec.name)
    slurm = scheduler_for("slurm")
    blender = ["/apps/blender/blender"]
    plain = slurm.finish_script(spec, preset, paths, blender, "/s/finish_task.py", Round(0, 1))
    assert "--video" not in plain and "FFmpeg" not in plain and f"--time=00:{FINISH_WALLTIME_MIN}:00" in plain
    spec = spec.__class__(**{**spec.to_dict(), "video": "prores", "frames": tuple(spec.frames), "tasks": spec.tasks})
    script = slurm.finish_script(spec, preset, paths, blender, "/s/finish_task.py", Round(0, 1))
    assert "module load FFmpeg/7.0" in script
    assert ("--video prores --fps 12 --ffmpeg ffmpeg --view-transform AgX --look 'AgX - Punchy' --exposure 0.7 "
            "--gamma 1 --display sRGB") in script
    assert FINISH_WALLTIME_MIN + 50 == 65 and "--time=01:05:00" in script  # 600 PNG frames in ProRes: 5 s each
    without = preset_from_dict({**_BASE, "partition_cpu": "cpu", "partitions": {"cpu": {"kind": "cpu"}}}, "y")
    bare = slurm.finish_script(spec, without, paths, blender, "/s/finish_task.py", Round(0, 1))
    assert "--video" not in bare  # a preset without ffmpeg: no movie there, whatever the spec says


def test_the_bundled_ffmpeg_runs_where_blender_unpacked_it_without_the_execute_bit(tmp_path: Path) -> None:
    """Blender extracts an extension's wheels with zipfile, which drops the execute bit."""
    import shutil
    import subprocess
    import sys

    import imageio_ffmpeg

    copy = tmp_path / "site" / "imageio_ffmpeg"
    shutil.copytree(Path(imageio_ffmpeg.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (binary,) = (copy / "binaries").glob("ffmpeg-*")
    binary.chmod(0o644)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from braas_hpc.core import video; "
             "print(video.bundled_ffmpeg())")
    env = {k: v for k, v in os.environ.items() if k != "IMAGEIO_FFMPEG_EXE"}
    env["PATH"] = "/nonexistent"  # no system ffmpeg to fall back on
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "site")], capture_output=True, text=True,
                          env=env, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and done.stdout.strip() == str(binary), done.stderr
    assert binary.stat().st_mode & 0o100
