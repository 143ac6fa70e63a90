"""The scene's own output on the real test cluster: multilayer EXR with its passes, JPEG, TIFF, the scene's
frame range and step, its colour settings kept, overrides applied, and download, recovery and the
finish step's thumbnail for each format."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

from PIL import Image

from tests.conftest import run_cli
from tests.helpers import check_frame, exr_header, make_sample, make_variant
from tests.testbed import testbed as tb

SMALL = {"resolution_x": 192, "resolution_y": 108, "samples": 4}


def _json(*args: str) -> dict:
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def _fetch(path: str, timeout: float = 180) -> bytes:
    """A file of the cluster (waiting for it to appear: the finish step runs after the tasks)."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(tb.ssh_command(tb.Layout.from_env(), f"cat {shlex.quote(path)}"), capture_output=True,
                              timeout=60)
        if done.returncode == 0 or time.monotonic() > deadline:
            assert done.returncode == 0, done.stderr
            return done.stdout
        time.sleep(2)


def _check_thumbnail(job: dict, size: tuple[int, int], folder: Path) -> None:
    """The finish step's thumb.jpg, made by Blender from the last frame: a JPEG showing the checker floor."""
    path = folder / f"{job['job']}-thumb.jpg"
    path.write_bytes(_fetch(f"{job['job_dir']}/thumb.jpg"))
    check_frame(path, size, kind="JPEG")


def test_exr_multilayer_jpeg_and_tiff_come_back_as_the_scene_says(testbed, remote, tmp_path: Path) -> None:  # noqa: ANN001
    started = time.monotonic()
    sample = make_sample(tmp_path / "project")
    layers = {"ViewLayer": {"use_pass_z": True, "use_pass_normal": True}, "Extra": {"use": True},
              "Off": {"use": False}}
    multilayer = make_variant(sample, sample.with_name("passes.blend"), file_format="OPEN_EXR_MULTILAYER",
                              color_depth="16", exr_codec="PIZ", view_layers=layers,
                              **{**SMALL, "resolution_x": 640, "resolution_y": 360, "samples": 64})
    jpeg = make_variant(sample, sample.with_name("range.blend"), file_format="JPEG", quality=95, frame_start=3,
                        frame_end=7, frame_step=2, **SMALL)
    tiff = make_variant(sample, sample.with_name("print.blend"), file_format="TIFF", tiff_codec="LZW",
                        color_depth="8", view_transform="Standard", **SMALL)
    # The multilayer scene is large and slow on purpose: the job's overrides make it small and quick.
    jobs = {
        "exr": _json("submit", str(multilayer), "--preset", "testbed", "--frames", "1",
                     "--resolution-percentage", "50", "--samples", "4"),
        "jpg": _json("submit", str(jpeg), "--preset", "testbed", "--chunk", "3"),  # no --frames: 3-7 step 2
        "tif": _json("submit", str(tiff), "--preset", "testbed", "--frames", "2"),
    }
    assert jobs["jpg"]["frames"] == "3,5,7" and jobs["jpg"]["tasks"] == 1
    for job in jobs.values():
        waited = run_cli("wait", job["job"], "--timeout", "600", timeout=700)
        assert waited.returncode == 0, waited.stdout + waited.stderr
    rendered = time.monotonic()

    got = {kind: tmp_path / kind for kind in jobs}
    for kind, job in jobs.items():
        assert _json("download", job["job"], "--dest", str(got[kind]))["downloaded"] >= 1
    assert sorted(p.name for p in got["jpg"].iterdir()) == [f"frame_{f:06d}.jpg" for f in (3, 5, 7)]
    for frame in got["jpg"].iterdir():
        check_frame(frame, (192, 108), kind="JPEG")
        with Image.open(frame) as image:  # libjpeg's tables at the scene's quality 95 (at 90, the default: 3)
            assert image.quantization[0][0] == 2  # type: ignore[attr-defined]
    (tif,) = got["tif"].iterdir()
    assert tif.name == "frame_000002.tif"
    check_frame(tif, (192, 108), kind="TIFF")
    with Image.open(tif) as image:
        assert image.info.get("compression") == "tiff_lzw"  # the scene's codec, not the format's default
        colours = image.convert("RGB").getcolors(maxcolors=192 * 108)
    # The scene's Standard view transform gives the emissive floor its texture's own colours back
    # (230, 13, 13 and 13, 204, 26 in the texture); Blender's default, AgX, would shift them.
    assert colours is not None
    red = max((count, rgb) for count, rgb in colours if rgb[0] > 150)[1]
    assert all(abs(a - b) <= 4 for a, b in zip(red, (230, 13, 13), strict=True)), colours[:10]

    (exr,) = got["exr"].iterdir()
    assert exr.name == "frame_000001.exr"
    channels, size, compression = exr_header(exr)
    assert size == (320, 180) and compression == 4  # 50% of 640x360; the scene's PIZ codec
    assert channels["ViewLayer.Combined.R"] == 1 and channels["Extra.Combined.R"] == 1  # half float: the scene's
    assert {"ViewLayer.Depth.Z", "ViewLayer.Normal.X", "ViewLayer.Normal.Z"} <= set(channels)
    assert not [c for c in channels if c.startswith("Off.")]  # a view layer not set to render is not rendered
    marker = json.loads(remote(f"cat {shlex.quote(jobs['exr']['job_dir'])}/status/task-1.json").stdout)
    assert marker["samples"] == 4 and marker["resolution"] == [640, 360, 50]
    assert marker["file_format"] == "OPEN_EXR_MULTILAYER" and marker["scene"] == "Scene"

    # The finish step made a thumbnail of each format, the multilayer EXR's scaled to 256 px wide.
    _check_thumbnail(jobs["exr"], (256, 144), tmp_path)
    _check_thumbnail(jobs["jpg"], (192, 108), tmp_path)
    _check_thumbnail(jobs["tif"], (192, 108), tmp_path)
    summary = json.loads(_fetch(f"{jobs['exr']['job_dir']}/summary.json"))
    assert summary["last_frame"] == "frame_000001.exr" and summary["missing"] == []

    # A lost .exr frame is seen as lost and rendered again, and the download fetches it again.
    lost = f"{jobs['exr']['job_dir']}/out/frame_000001.exr"
    assert remote(f"rm {shlex.quote(lost)}").returncode == 0
    status = run_cli("status", jobs["exr"]["job"], "--json")
    assert "1 lost frame(s) resubmitted as round 1" in status.stderr, status.stdout + status.stderr
    assert run_cli("wait", jobs["exr"]["job"], "--timeout", "600", timeout=700).returncode == 0
    exr.unlink()
    assert _json("download", jobs["exr"]["job"], "--dest", str(got["exr"]))["downloaded"] == 1
    assert exr_header(exr)[1] == (320, 180)
    print(f"output formats: rendered in {rendered - started:.1f} s, all checks in {time.monotonic() - started:.1f} s")
