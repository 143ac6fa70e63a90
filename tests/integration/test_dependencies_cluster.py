"""Every file a scene needs reaches the test cluster and is used, in both pack modes: one scene with a
linked library, an image sequence, UDIM tiles, a movie, an Alembic mesh cache, a PC2 mesh cache, an
OpenVDB volume, a disk point cache, a geometry-nodes bake and a simulation bake, an external multires
displacement, a font and an image (tests/deps_scene.py), rendered at 120x72, each dependency checked by
the colour only its file brings (tests/blender/test_dependencies.py shows the scene renders none of them
without its files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.deps_layout import FRAME
from tests.helpers import deps_cells, make_deps_scene


@pytest.fixture(autouse=True)
def own_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))


def _submit(scene: Path, pack: str) -> dict:
    done = run_cli("submit", str(scene), "--preset", "testbed", "--frames", str(FRAME), "--pack", pack, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _submit_text(scene: Path) -> dict:
    """Packed mode as a user types it: the note is printed; the job name is the last line."""
    done = run_cli("submit", str(scene), "--preset", "testbed", "--frames", str(FRAME))
    assert done.returncode == 0, done.stderr
    notes = [line.removeprefix("note: ") for line in done.stdout.splitlines() if line.startswith("note: ")]
    sent = next(line for line in done.stdout.splitlines() if line.startswith("inputs: sent"))
    return {"job": done.stdout.split()[-1], "notes": notes, "uploaded_files": int(sent.split()[2]),
            "uploaded_bytes": int(sent.split()[4])}


def _cells(job: str, dest: Path, kinds: list[str]) -> dict[str, bool]:
    waited = run_cli("wait", job, "--timeout", "600", timeout=700)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    got = run_cli("download", job, "--dest", str(dest), "--json")
    assert got.returncode == 0, got.stderr
    return deps_cells(dest / f"frame_{FRAME:06d}.png", kinds)


@pytest.fixture(scope="module")
def renders(testbed, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: ANN001
    """Three jobs, rendered once for the tests below: the full scene in dir and packed mode, and the scene
    with only what Blender packs in packed mode."""
    tmp_path = tmp_path_factory.mktemp("deps-cluster")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))
        full = make_deps_scene(tmp_path / "full")
        packable = make_deps_scene(tmp_path / "packable", packable=True)
        kinds = json.loads((full.parent / "deps.json").read_text())["kinds"]
        packable_kinds = json.loads((packable.parent / "deps.json").read_text())["kinds"]
        jobs = {"dir": _submit(full, "dir"), "packed (sent as folder)": _submit_text(full),
                "packed": _submit(packable, "packed")}
        print("bytes sent: " + ", ".join(f"{mode} {job['uploaded_bytes']} in {job['uploaded_files']} file(s)"
                                         for mode, job in jobs.items()))
        cells = {mode: _cells(job["job"], tmp_path / mode.split()[0] / str(i),
                              packable_kinds if mode == "packed" else kinds)
                 for i, (mode, job) in enumerate(jobs.items())}
    return {"jobs": jobs, "cells": cells}


def test_every_dependency_reaches_the_render_in_both_pack_modes(renders: dict) -> None:
    jobs = renders["jobs"]
    assert jobs["dir"]["notes"] == []
    # Packed mode cannot pack sequences and caches: it sends the folder and says so, never drops them.
    notes = jobs["packed (sent as folder)"]["notes"]
    assert len(notes) == 1 and "cannot pack" in notes[0] and "tile_0001.png" in notes[0]
    # Linked library, UDIM tiles, font and image: packed into the one .blend, library made local.
    packed = jobs["packed"]
    assert packed["notes"] == [] and packed["uploaded_files"] + packed["skipped_files"] == 1
    lost = {mode: [k for k, ok in cells.items() if not ok] for mode, cells in renders["cells"].items()}
    assert not any(lost.values()), f"dependencies missing from the render: {lost}"


def test_missing_and_damaged_files_are_refused_before_anything_is_sent(testbed, tmp_path: Path  # noqa: ANN001
                                                                       ) -> None:
    scene = make_deps_scene(tmp_path / "project")
    shutil.rmtree(scene.parent / "seq")
    shutil.rmtree(scene.parent / "abc")
    for pack in ("packed", "dir"):
        done = run_cli("submit", str(scene), "--preset", "testbed", "--frames", "2", "--pack", pack)
        assert done.returncode == 2, (pack, done.stderr)
        assert "Image 'tile_0001.png' in deps.blend:" in done.stderr and "Cache file 'plane.abc'" in done.stderr
        assert "Traceback" not in done.stderr and "submitted" not in done.stdout

    broken = tmp_path / "broken.blend"
    broken.write_bytes(scene.read_bytes()[:4000])  # a .blend cut short, as by a failed copy
    for pack in ("packed", "dir"):
        done = run_cli("submit", str(broken), "--preset", "testbed", "--frames", "2", "--pack", pack)
        assert done.returncode == 2 and "broken.blend" in done.stderr, (pack, done.stderr)
        assert "Traceback" not in done.stderr
