"""Which Blender saved a .blend (both header layouts, compressed or not) and which Blender a command runs."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
import zstandard

from braas_hpc.core import blender_version as bv
from braas_hpc.core.errors import UsageError

BODY = b"REND" + bytes(60)  # what follows the header does not matter to the version


def blend(path: Path, header: bytes, compress: str = "") -> Path:
    data = header + BODY
    if compress == "gzip":
        data = gzip.compress(data)
    elif compress == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("header, version", [
    (b"BLENDER-v405", (4, 5)),  # 4.x: pointer size, endianness, three digits
    (b"BLENDER_v402", (4, 2)),
    (b"BLENDER17-01v0500", (5, 0)),  # 5.0 on: header size, format, four digits
    (b"BLENDER17-01v0503", (5, 3)),
])
@pytest.mark.parametrize("compress", ["", "gzip", "zstd"])
def test_file_version_reads_both_header_layouts(tmp_path: Path, header: bytes, version: tuple[int, int],
                                                compress: str) -> None:
    assert bv.file_version(blend(tmp_path / "s.blend", header, compress)) == version


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04 a zip, not a blend", b"BLENDER?v405", b"\x28\xb5\x2f\xfdjunk"])
def test_not_a_blend_is_a_usage_error_naming_the_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "broken.blend"
    path.write_bytes(data)
    with pytest.raises(UsageError, match="broken.blend"):
        bv.file_version(path)


def fake_blender(tmp_path: Path, version_line: str, name: str = "blender") -> tuple[str, ...]:
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\necho '{version_line}'\necho called >> '{tmp_path}/calls'\n")
    script.chmod(0o755)
    return (str(script),)


def test_an_older_blender_than_the_file_is_refused(tmp_path: Path, user_dirs: dict[str, str]) -> None:
    scene = blend(tmp_path / "shot.blend", b"BLENDER-v405", "zstd")
    older = fake_blender(tmp_path, "Blender 4.2.3 LTS")
    with pytest.raises(UsageError, match=r"shot.blend was saved by Blender 4.5.*is 4.2.3"):
        bv.check_can_open(scene, older, "packs the scene")
    bv.check_can_open(scene, fake_blender(tmp_path, "Blender 4.5.0", "b45"), "packs the scene")
    bv.check_can_open(scene, fake_blender(tmp_path, "Blender 5.3.0", "b53"), "packs the scene")


def test_a_blender_older_than_supported_is_refused(tmp_path: Path, user_dirs: dict[str, str]) -> None:
    scene = blend(tmp_path / "old.blend", b"BLENDER-v304")
    with pytest.raises(UsageError, match="older than 4.2"):
        bv.check_can_open(scene, fake_blender(tmp_path, "Blender 3.4.1"), "renders here")


def test_a_command_that_is_no_blender_is_refused(tmp_path: Path, user_dirs: dict[str, str]) -> None:
    scene = blend(tmp_path / "s.blend", b"BLENDER-v405")
    with pytest.raises(UsageError, match="did not say which Blender"):
        bv.check_can_open(scene, fake_blender(tmp_path, "hello"), "renders here")


def test_a_version_is_asked_once_per_executable_until_it_changes(tmp_path: Path, user_dirs: dict[str, str]) -> None:
    bv._ask_version.cache_clear()
    argv = fake_blender(tmp_path, "Blender 4.5.1")
    assert bv.command_version(argv) == (4, 5, 1)
    bv._ask_version.cache_clear()  # a new process: the answer comes from the data directory
    assert bv.command_version(argv) == (4, 5, 1)
    assert (tmp_path / "calls").read_text().count("called") == 1
    # An upgrade in place (new bytes, new time) is asked again.
    Path(argv[0]).write_text("#!/bin/sh\necho 'Blender 5.0.1'\n")
    os.utime(argv[0], ns=(1, 1))
    bv._ask_version.cache_clear()
    assert bv.command_version(argv) == (5, 0, 1)


def test_the_bpy_module_version_comes_from_its_metadata() -> None:
    from importlib.metadata import version

    from braas_hpc.core.local_blender import BPY_LAUNCHER

    found = bv.command_version(("/no/such/python", str(BPY_LAUNCHER)))  # never run: the metadata answers
    assert ".".join(map(str, found)) == version("bpy")


def test_cluster_warning_only_when_the_cluster_is_older() -> None:
    assert "older than the file" in bv.cluster_warning("Blender 4.2.3 LTS", (4, 5), "karolina")
    assert bv.cluster_warning("Blender 4.5.4 LTS", (4, 5), "karolina") == ""
    assert bv.cluster_warning("Blender 5.0.1", (4, 5), "karolina") == ""
    assert bv.cluster_warning("", (4, 5), "karolina") == ""  # not known: nothing to say


def test_submit_warns_when_the_clusters_recorded_blender_is_older(tmp_path: Path, user_dirs: dict[str, str]) -> None:
    from braas_hpc.core import service
    from braas_hpc.core.cluster_blender import InstalledBlender, record_blender
    from braas_hpc.core.jobs import JobSpec
    from braas_hpc.core.presets import load_preset

    preset = load_preset("karolina")
    scene = blend(tmp_path / "shot.blend", b"BLENDER17-01v0500", "zstd")  # saved by 5.0
    spec = JobSpec(name="j", preset="karolina", scene=str(scene), frames=(1,), pack="dir")
    assert service.version_warnings(spec, preset) == ()  # nothing recorded: nothing known, nothing said
    record_blender("karolina", InstalledBlender("blender", (), {}, "Blender 4.5.4 LTS"))
    (warning,) = service.version_warnings(spec, preset)
    assert "karolina is 4.5.4, older than the file it will render (saved by 5.0)" in warning
    record_blender("karolina", InstalledBlender("blender", (), {}, "Blender 5.0.1"))
    assert service.version_warnings(spec, preset) == ()
    # Packed mode: the cluster opens the copy this computer's Blender (the bpy module, 4.5 here) saves.
    older = blend(tmp_path / "old.blend", b"BLENDER-v402")
    record_blender("karolina", InstalledBlender("blender", (), {}, "Blender 4.2.3 LTS"))
    packed = JobSpec(name="j", preset="karolina", scene=str(older), frames=(1,), pack="packed")
    (warning,) = service.version_warnings(packed, preset)
    assert "saved by 4.5" in warning
