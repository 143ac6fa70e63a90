"""Split stills on this computer (the local preset: the same render task and finish step as a cluster's),
with bpy 4.5 and 5.0: Cycles' merge and denoise operators as each version has them.

A scene that denoises and writes PNG comes back as one denoised PNG of its size; a float EXR scene that
does not denoise comes back merged within the tolerance tests/integration/test_split_still.py explains.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.integration.test_split_still import _bpy, check_merge_within_noise


def test_a_split_still_is_merged_and_denoised_here(tmp_path: Path, user_dirs: dict[str, str],
                                                   monkeypatch: pytest.MonkeyPatch, bpy_path: str) -> None:
    if bpy_path:  # scenes, render tasks, finish steps and measures all in this bpy: 5.0 from here on
        monkeypatch.setenv("PYTHONPATH", bpy_path)
    denoised = tmp_path / "denoised.blend"
    _bpy("scene", str(denoised), "--format", "PNG", "--denoise")
    done = run_cli("render", str(denoised), "--split-samples", "2", "--out", str(tmp_path / "png"), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["frames"] == "1" and result["tasks"] == 2
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["frame_000001.png"]
    with Image.open(tmp_path / "png" / "frame_000001.png") as image:
        assert image.format == "PNG" and image.size == (64, 36)
        assert len(image.convert("RGB").getcolors(maxcolors=64 * 36) or []) > 20  # a render, not a blank
    job_dir = Path(result["job_dir"])
    summary = json.loads((job_dir / "summary.json").read_text())
    assert summary["split"]["merged"] and summary["split"]["denoised"], summary
    assert summary["frames_ok"] == 1 and summary["thumbnail"] == "thumb.jpg"
    for task in (1, 2):
        marker = json.loads((job_dir / "status" / f"task-{task}.json").read_text())
        assert marker["parts"] == {str(task): {"offset": 32 * (task - 1), "samples": 32}}, marker
        assert marker["blender"].startswith("5.0" if bpy_path else "4.5")

    plain = tmp_path / "plain.blend"
    _bpy("scene", str(plain))
    done = run_cli("render", str(plain), "--split-samples", "4", "--out", str(tmp_path / "exr"), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    merged = tmp_path / "exr" / "frame_000001.exr"
    part = Path(json.loads(done.stdout)["job_dir"]) / "out" / "frame_000001.part002.exr"
    check_merge_within_noise(plain, tmp_path / "measure", merged, part, f"bpy {'5.0' if bpy_path else '4.5'}")


def test_the_panels_split_samples_renders_a_still_as_parts(tmp_path: Path) -> None:
    from tests.blender.addon_runner import Session

    scene = tmp_path / "still.blend"
    _bpy("scene", str(scene), "--format", "PNG", "--denoise")
    got = Session(tmp_path / "user").run(f"""
        from braas_hpc.blender import checks
        bpy.ops.wm.open_mainfile(filepath={str(scene)!r})
        scene = bpy.context.scene
        settings = scene.braas_hpc
        settings.preset, settings.split_samples = "local", 3
        scene.frame_end = 4
        result["animation_is_still"] = checks.is_still(settings)  # the panel shows Split samples for a still only
        settings.animation = False  # the current frame: a still
        result["still"] = checks.is_still(settings)
        result["submit"] = sorted(bpy.ops.braas_hpc.submit())
        result["download"] = sorted(bpy.ops.braas_hpc.download_job())
        jobs = bpy.context.window_manager.braas_hpc.jobs
        result["jobs"] = [(j.name, j.state, j.frames_done, j.frames_total) for j in jobs]
    """)
    assert got["animation_is_still"] is False and got["still"] is True
    assert got["submit"] == ["FINISHED"] and got["download"] == ["FINISHED"], got
    ((name, state, done, total),) = got["jobs"]
    assert (state, done, total) == ("COMPLETED", 3, 3), got  # three parts
    folder = tmp_path / "user" / "home" / "braas-hpc" / name
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["frame_000001.png"], list(folder.iterdir())
