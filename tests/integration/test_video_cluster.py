"""Movies of jobs on real Slurm: made by the finish step where the preset names an ffmpeg (the testbed's
copy of imageio-ffmpeg's build, tests/testbed), else made here after the download."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from braas_hpc.core.presets import load_preset
from tests import video_probe as vp
from tests.conftest import run_cli
from tests.helpers import cluster_file_when_written, eventually, make_sample
from tests.testbed import testbed as tb


def _json(*args: str, timeout: float = 600) -> dict:
    done = run_cli(*args, "--json", timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def with_ffmpeg(testbed) -> Iterator[str]:  # noqa: ANN001
    """`tb-ffmpeg`: the testbed preset naming the cluster's ffmpeg by its path."""
    ffmpeg = tb.ensure_ffmpeg(tb.Layout.from_env())
    base = load_preset("testbed")
    preset = Path(base.source).parent / "tb-ffmpeg.toml"
    text = Path(base.source).read_text().replace('name = "testbed"', 'name = "tb-ffmpeg"')
    preset.write_text(f'{text.rstrip()}\nffmpeg = "{ffmpeg}"\n')
    yield "tb-ffmpeg"
    preset.unlink(missing_ok=True)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return vp.movie_scene(make_sample(tmp_path / "project", fresh=True))


@pytest.fixture
def blender_png(scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Image.Image:
    """Blender's own display-referred PNG of frame 1 (rendered here: the same bpy as the cluster's)."""
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "local-data"))
    out = tmp_path / "png"
    _json("render", str(scene), "--frames", "1", "--format", "PNG", "--out", str(out))
    monkeypatch.undo()
    with Image.open(out / "frame_000001.png") as image:
        return image.convert("RGB")


def _probe(movie: Path, codec: str, fps: str, reference: Image.Image) -> None:
    assert vp.frame_count(movie) == 3
    assert vp.stream_info(movie) == (codec, vp.SIZE[0] + 1, vp.SIZE[1] + 1, fps)
    assert vp.mean_difference(vp.first_picture(movie), reference) < vp.TOLERANCE


def test_the_finish_step_makes_the_movie_of_exr_frames(with_ffmpeg: str, remote, scene: Path,  # noqa: ANN001
                                                       blender_png: Image.Image, tmp_path: Path) -> None:
    job = _json("submit", str(scene), "--preset", with_ffmpeg, "--frames", "1-3", "--chunk", "3", "--format",
                "OPEN_EXR", "--video", "h264", "--retries", "0")
    waited = run_cli("wait", job["job"], "--timeout", "600", "--json", timeout=700)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    # The summary is written once before the movie is made, and again with it.
    summary = eventually(lambda: json.loads(cluster_file_when_written(remote, f"{job['job_dir']}/summary.json")),
                         lambda summary: "video" in summary or "video_error" in summary, "the movie in summary.json")
    assert summary["video"] == "video-h264-12fps.mp4" and summary["video_encoder"] == "libx264", summary
    dest = tmp_path / "frames"

    made = _json("video", job["job"], "--dest", str(dest))
    assert made["made_on"] == "cluster" and made["frames_downloaded"] == 4  # three frames and the movie
    movie = Path(made["video"])
    assert movie == dest / "video-h264-12fps.mp4"
    _probe(movie, "h264", "12", blender_png)  # tone-mapped on the cluster with the scene's AgX, look, exposure
    assert vp.mean_difference(vp.exr_as_is(dest / "frame_000001.exr"), blender_png) > 4 * vp.TOLERANCE
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]
    listing = remote(f"ls -A {job['job_dir']}/out").stdout.split()
    assert sorted(listing) == ["frame_000001.exr", "frame_000002.exr", "frame_000003.exr", "video-h264-12fps.mp4"]


def test_without_a_cluster_ffmpeg_the_movie_is_made_here(testbed, scene: Path, blender_png: Image.Image,  # noqa: ANN001
                                                         tmp_path: Path) -> None:
    refused = run_cli("submit", str(scene), "--preset", "testbed", "--frames", "1-3", "--video", "h264")
    assert refused.returncode == 2 and "names no ffmpeg" in refused.stderr, refused.stderr
    job = _json("submit", str(scene), "--preset", "testbed", "--frames", "1-3", "--chunk", "3", "--format", "PNG",
                "--retries", "0")
    waited = run_cli("wait", job["job"], "--timeout", "600", "--json", timeout=700)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    dest = tmp_path / "frames"

    made = _json("video", job["job"], "--dest", str(dest), "--codec", "prores")
    assert made["made_on"] == "here" and made["encoder"] == "prores_ks" and made["frames_downloaded"] == 3
    _probe(Path(made["video"]), "prores", "12", blender_png)
