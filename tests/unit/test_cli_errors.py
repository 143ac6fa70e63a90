"""Bad input: a clear message, exit code 2, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


def _nothing_written(dirs: dict[str, str]) -> bool:
    return not any(Path(d).exists() and any(Path(d).rglob("*")) for d in dirs.values())


def test_missing_scene(user_dirs: dict[str, str], tmp_path: Path) -> None:
    done = run_cli("render", str(tmp_path / "missing.blend"), "--frames", "1")
    assert done.returncode == 2
    assert "scene file not found" in done.stderr and "missing.blend" in done.stderr
    assert _nothing_written(user_dirs)


def test_unknown_preset(user_dirs: dict[str, str], sample_scene: Path) -> None:
    done = run_cli("submit", str(sample_scene), "--preset", "nosuchcluster", "--frames", "1")
    assert done.returncode == 2
    assert "unknown preset 'nosuchcluster'" in done.stderr and "local" in done.stderr
    assert _nothing_written(user_dirs)


@pytest.mark.parametrize(("spec", "message"), [("5-1", "ends before it starts"), ("a-b", "not a frame number")])
def test_bad_frame_spec(user_dirs: dict[str, str], sample_scene: Path, spec: str, message: str) -> None:
    for verb in (["render"], ["submit", "--preset", "local"]):
        done = run_cli(*verb, str(sample_scene), "--frames", spec)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and repr(spec) in done.stderr
    assert _nothing_written(user_dirs)


def test_not_a_blend_file(user_dirs: dict[str, str], tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    done = run_cli("render", str(text), "--frames", "1")
    assert done.returncode == 2 and "not a .blend file" in done.stderr


def test_unknown_job(user_dirs: dict[str, str]) -> None:
    for verb in ("wait", "download"):
        done = run_cli(verb, "no-such-job")
        assert done.returncode == 2 and "no job named 'no-such-job'" in done.stderr


def test_usage_error_exit_code(user_dirs: dict[str, str]) -> None:
    done = run_cli("submit")
    assert done.returncode == 2 and "usage:" in done.stderr


def test_presets_checks_what_only_the_scheduler_knows(user_dirs: dict[str, str]) -> None:
    presets = Path(user_dirs["BRAAS_HPC_CONFIG_DIR"]) / "presets"
    presets.mkdir(parents=True)
    (presets / "mine.toml").write_text('name = "mine"\nscheduler = "sge"\nhost = "login"\nblender = "blender"\n'
                                       'gpu_request = "ngpus"\n')
    done = run_cli("presets")
    assert done.returncode == 2 and "gpu_request 'ngpus' is not one of gpus, none under Grid Engine" in done.stderr, (
        done.stderr)


def test_render_out_that_cannot_hold_frames_is_refused_before_rendering(user_dirs: dict[str, str],
                                                                        sample_scene: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    done = run_cli("render", str(sample_scene), "--frames", "1", "--out", str(a_file / "frames"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{a_file} exists and is not a directory" in done.stderr
    assert _nothing_written(user_dirs)  # nothing rendered, nothing registered
