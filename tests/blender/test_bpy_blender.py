"""The bpy-based `blender` stand-in, run as a subprocess on a tiny Cycles scene it builds."""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import REPO

# No skip when bpy is missing: the test extra installs it, so its absence must fail the suite.
LAUNCHER = REPO / "braas_hpc" / "bpy_blender.py"
TIMEOUT = 300  # generous: the machine is small and shared

def run_launcher(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG signature and IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def launcher_module() -> ModuleType:
    """The launcher imported in-process (it only imports bpy inside main())."""
    spec = importlib.util.spec_from_file_location("bpy_blender_under_test", LAUNCHER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_render_frame_list_writes_exactly_those_frames(scene: Path) -> None:
    result = run_launcher(
        "-b", scene, "-E", "CYCLES", "-o", "//out/frame_####", "-F", "PNG", "-f", "1,3..4",
        cwd=scene.parent,
    )
    assert result.returncode == 0, result.stderr
    out = scene.parent / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["frame_0001.png", "frame_0003.png", "frame_0004.png"]
    for name in names:
        assert png_size(out / name) == (64, 48)
        assert f"Saved: '{out / name}'" in result.stdout


def test_render_anim_uses_start_and_end(scene: Path) -> None:
    result = run_launcher(
        "-b", scene, "-o", "//anim/f_##", "-F", "PNG", "-s", "2", "-e", "3", "-a",
        cwd=scene.parent,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (scene.parent / "anim").iterdir()) == ["f_02.png", "f_03.png"]


def test_script_gets_args_after_double_dash(scene: Path, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    report = tmp_path / "report.json"
    script.write_text(
        "import json, sys, bpy\n"
        "args = sys.argv[sys.argv.index('--') + 1:]\n"
        "json.dump({'args': args, 'argv': sys.argv, 'name': __name__, 'file': __file__,\n"
        "           'blend': bpy.data.filepath}, open(args[-1], 'w'))\n"
    )
    result = run_launcher("-b", scene, "-P", script.name, "--", "a", "b", report, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(report.read_text())
    assert seen["args"] == ["a", "b", str(report)]
    assert seen["argv"][1:4] == ["-b", str(scene), "-P"]
    assert seen["name"] == "__main__"
    assert seen["file"] == str(script)
    assert seen["blend"] == str(scene)


def test_settings_are_applied_in_order(scene: Path, tmp_path: Path) -> None:
    report = tmp_path / "settings.json"
    dump = (
        "import bpy, json; s = bpy.context.scene; r = s.render; json.dump([s.name, r.engine, "
        "r.threads_mode, r.threads, r.filepath, r.image_settings.file_format, "
        "r.use_file_extension, s.frame_start, s.frame_end, s.frame_step], "
        f"open({str(report)!r}, 'w'))"
    )
    # -t comes before the file on purpose: like Blender's, it applies to files loaded later.
    result = run_launcher(
        "-t", "3", "-b", scene, "-S", "Second", "-E", "BLENDER_WORKBENCH", "-o", "//x/y_##",
        "-F", "JPEG", "-x", "0", "-s", "+1", "-e", "7", "-j", "2", "--python-expr", dump,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(report.read_text()) == [
        "Second", "BLENDER_WORKBENCH", "FIXED", 3, "//x/y_##", "JPEG", False, 2, 7, 2,
    ]


def test_sys_exit_in_script_is_the_exit_code(tmp_path: Path) -> None:
    marker = tmp_path / "after"
    (tmp_path / "quit.py").write_text("import sys\nsys.exit(3)\n")
    result = run_launcher(
        "-b", "-P", "quit.py", "--python-expr", f"open({str(marker)!r}, 'w')", cwd=tmp_path
    )
    assert result.returncode == 3, result.stderr
    assert not marker.exists(), "arguments after the exiting script must not run"


@pytest.mark.parametrize(
    ("exit_code_args", "expected"), [((), 0), (("--python-exit-code", "7"), 7)]
)
def test_script_exception(tmp_path: Path, exit_code_args: tuple[str, ...], expected: int) -> None:
    marker = tmp_path / "after"
    (tmp_path / "boom.py").write_text("raise ValueError('boom')\n")
    result = run_launcher(
        "-b", *exit_code_args, "-P", "boom.py", "--python-expr", f"open({str(marker)!r}, 'w')",
        cwd=tmp_path,
    )
    assert result.returncode == expected
    assert "ValueError: boom" in result.stderr
    # Without --python-exit-code Blender carries on with the next argument.
    assert marker.exists() == (expected == 0)


def test_unknown_option_fails_before_running_anything(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = run_launcher(
        "-b", "--python-expr", f"open({str(marker)!r}, 'w')", "--no-such-option", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "Error: unknown argument --no-such-option" in result.stderr
    assert not marker.exists()


def test_missing_blend_fails(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = run_launcher(
        "-b", "missing.blend", "--python-expr", f"open({str(marker)!r}, 'w')", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "missing.blend" in result.stderr
    assert not marker.exists()


def test_version(tmp_path: Path) -> None:
    result = run_launcher("-v", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("Blender 4.")
    assert "(bpy module)" in result.stdout


def test_frame_spec_parsing(launcher_module: ModuleType) -> None:
    parse = launcher_module.parse_frame_spec
    assert parse("1,5,10..12", 1, 250) == [(1, 1), (5, 5), (10, 12)]
    # '+N' counts from the start frame, '-N' back from the end frame (-1 is the end).
    assert parse("+2,-1,2..-2", 10, 100) == [(12, 12), (100, 100), (2, 99)]
    for bad in ("1,,2", "a", "1..", "", "1.5"):
        with pytest.raises(ValueError):
            parse(bad, 1, 250)


def test_relative_start_and_end(launcher_module: ModuleType) -> None:
    relative = launcher_module.parse_relative
    start, end = 10, 20
    assert relative("+5", start, start - 1) == 15
    assert relative("-3", start, start - 1) == 7
    assert relative("-3", end, end - 1) == 17
    assert relative("42", start, start - 1) == 42
