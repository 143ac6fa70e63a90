"""The render task (cluster_scripts/render_task.py) in real Blender 4.5 and 5.x: what its log says about
the samples of each frame, read as the status call reads it (braas_hpc/core/live.py), and the preview JPEG
it leaves after each frame, the older one gone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from braas_hpc.core import live
from tests.blender.bpy_builds import MATRIX
from tests.helpers import REPO, make_sample
from tests.testbed import testbed as tb

BUILDS = [b for b in MATRIX if b.version in (tb.BPY_VERSION, "5.3.0")]
# The lines the status call's command keeps from a log (live._GLIMPSE_SCRIPT's grep), as Python reads them.
KEPT = re.compile(r"Sample [0-9]+/[0-9]+|Rendered [0-9]+/[0-9]+ samples|BRAAS-PROGRESS|[|] Finished")


@pytest.mark.parametrize("build", BUILDS, ids=str)
def test_sample_progress_and_previews_of_a_real_render_task(build, tmp_path: Path) -> None:  # noqa: ANN001
    scene = make_sample(tmp_path / "scene")
    job = tmp_path / "job"
    job.mkdir()
    (job / "frames.txt").write_text("1,2\n")
    # 384x216 (the sample at 200 %): its preview is scaled to 256 pixels wide. Many samples in small tiles,
    # so a frame takes long enough for several status updates.
    script = ("import bpy; s = bpy.context.scene; s.cycles.use_auto_tile = True; s.cycles.tile_size = 64; "
              "s.cycles.use_adaptive_sampling = False; s.cycles.use_denoising = False")
    done = subprocess.run(
        [build.interpreter(), str(REPO / "braas_hpc" / "bpy_blender.py"), "-b", str(scene), "--python-expr", script,
         "-P", str(REPO / "cluster_scripts" / "render_task.py"), "--", "--job-dir", str(job), "--task", "1",
         "--resolution-percentage", "200", "--samples", "64"],
        env=build.env(tmp_path / "home"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    kept = [line for line in done.stdout.replace("\r", "\n").splitlines() if KEPT.search(line)]
    read = [live.progress_of(line) for line in kept]
    ours = [line for line in kept if line.startswith("BRAAS-SAMPLES task=1 ")]
    # Our own line in every version (Blender 5 prints Cycles' status only at its info log level).
    assert {live.progress_of(line)[0] for line in ours} == {1, 2}, kept
    assert all(frame in (1, 2) for frame, _ in read), kept
    percents = [p for _, p in read if p is not None]
    assert any(0 < p < 100 for p in percents) and percents[-1] == 100.0, kept
    native = [line for line in kept if line.startswith("Fra:")]
    assert bool(native) == build.version.startswith("4."), kept[:5]  # Blender 4 prints its own too
    # After each frame a preview; the task's older one is gone once the newer is there.
    previews = sorted((job / "status" / "previews").iterdir())
    assert [p.name for p in previews] == ["frame_000002.jpg"]
    with Image.open(previews[0]) as image:
        assert image.format == "JPEG" and image.size == (256, 144)
        assert len(image.convert("RGB").getcolors(maxcolors=256 * 144) or []) > 20  # a picture, not a fill
