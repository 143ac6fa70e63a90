"""The package as a user installs it: the wheel built from this tree, installed into a fresh venv of every
Python 3.11+ on this machine (pyenv's and Debian's own, which is "externally managed": only a venv may take
packages), then the installed `braas-hpc` run from outside the clone (`--version` and a `submit --dry-run`).

The dependencies come from a local wheel cache (BRAAS_WHEEL_CACHE, default /var/tmp/braas-wheels), filled from
the package index on the first run for each Python; later runs install with --no-index. The venvs are made
without pip (this process's pip installs into them with --python): no root, no network after the first run.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from braas_hpc.core import VERSION
from tests.helpers import REPO

CACHE = Path(os.environ.get("BRAAS_WHEEL_CACHE", "/var/tmp/braas-wheels"))
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def _version(python: str) -> tuple[int, int] | None:
    done = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True,
                          timeout=60)
    return tuple(int(n) for n in done.stdout.split()) if done.returncode == 0 else None  # type: ignore[return-value]


def pythons() -> dict[str, str]:
    """Every Python 3.11 or newer here, one per interpreter (pyenv's versions and /usr/bin's), by a test id."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(f"{root}/versions/3.*/bin/python3.*[0-9]")) + sorted(
        glob.glob("/usr/bin/python3.[0-9]*[0-9]"))
    found: dict[str, str] = {}
    seen: set[str] = set()
    for python in candidates:
        real = os.path.realpath(python)
        version = _version(python) if real not in seen else None
        seen.add(real)
        if version and version >= (3, 11):
            where = "system" if python.startswith("/usr/bin/") else "pyenv"
            found[f"{where}-{version[0]}.{version[1]}"] = python
    return found


PYTHONS = pythons()


def test_the_pythons_the_core_supports_are_here() -> None:
    """3.11 (Blender 4.x's) and 3.13 (Blender 5.1+'s) must be among those the install test covers."""
    assert {"3.11", "3.13"} <= {name.split("-")[1] for name in PYTHONS}, PYTHONS


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a copy: setuptools reuses a clone's build/ (stale files would pass for packaged ones) and writes there.
    source = out / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                                 ".*cache", ".hypothesis", ".benchmarks", "frames"))
    done = subprocess.run([*PIP, "wheel", "-q", "--no-deps", "-w", str(out), str(source)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("braas_hpc-*.whl")
    return built


def _install(venv_python: Path, wheel: Path, version: str) -> None:
    """The wheel with its pinned dependencies, from the cache; the cache is filled for this Python once."""
    install = [*PIP, "--python", str(venv_python), "install", "-q", "--no-index", "--find-links", str(CACHE),
               str(wheel)]
    done = subprocess.run(install, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:  # first run for this Python (or new pins): fetch its wheels, then offline again
        fetch = subprocess.run([*PIP, "download", "-q", "--only-binary=:all:", "--python-version", version,
                                "-d", str(CACHE), str(wheel)], capture_output=True, text=True, timeout=900)
        assert fetch.returncode == 0, fetch.stderr[-3000:]
        for ours in CACHE.glob("braas_hpc-*.whl"):  # pip download copies the wheel it was given: never reuse it
            ours.unlink()
        done = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.xdist_group("wheel-install")  # one worker fills the shared wheel cache
@pytest.mark.parametrize("name", list(PYTHONS))
def test_wheel_installs_and_runs_in_a_fresh_venv(wheel: Path, tmp_path: Path, name: str) -> None:
    python = PYTHONS[name]
    venv = tmp_path / "venv"
    made = subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    _install(venv / "bin" / "python", wheel, name.split("-")[1])
    home = tmp_path / "home"
    home.mkdir()
    # Outside the clone, without PYTHONPATH, with a home of its own: only the installed package can answer.
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    command = str(venv / "bin" / "braas-hpc")
    version = subprocess.run([command, "--version"], capture_output=True, text=True, env=env, cwd=home, timeout=120)
    assert version.returncode == 0, version.stderr
    assert VERSION in version.stdout, version.stdout
    scene = REPO / "examples" / "sample" / "sample.blend"
    plan = subprocess.run([command, "submit", str(scene), "--preset", "karolina", "--frames", "1-2", "--dry-run"],
                          capture_output=True, text=True, env=env, cwd=home, timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert "#SBATCH --account=<ACCOUNT>" in plan.stdout and "#SBATCH --partition=qcpu" in plan.stdout, plan.stdout
    assert "render_task.py" in plan.stdout  # the cluster scripts are in the wheel (their hash names the directory)
    if name.endswith("-3.12"):  # no bpy for this Python: the render extra installs, render asks for a Blender
        _install(venv / "bin" / "python", Path(f"{wheel}[render]"), "3.12")
        render = subprocess.run([command, "render", str(scene), "--frames", "1", "--out", str(home / "frames")],
                                capture_output=True, text=True, env=env, cwd=home, timeout=120)
        assert render.returncode == 2 and "no Blender found" in render.stderr, render.stderr
        assert "BRAAS_HPC_BLENDER" in render.stderr and not (home / "frames").exists()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import braas_hpc; print(braas_hpc.__file__)"],
                           capture_output=True, text=True, env=env, cwd=home, timeout=60)
    assert where.stdout.startswith(str(venv)), where.stdout  # the venv's copy, not the clone


def _bpy_python(version: str) -> str:
    """The one Python a bpy release has wheels for: Blender's own (3.11 up to 5.0, 3.13 from 5.1)."""
    return "3.11" if Version(version) < Version("5.1") else "3.13"


def test_render_extra_pins_a_bpy_with_a_wheel_for_each_python(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (meta,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        lines = archive.read(meta).decode().splitlines()
    bpy = [Requirement(line.split(":", 1)[1]) for line in lines if line.startswith("Requires-Dist: bpy")]
    for python in ("3.11", "3.12", "3.13"):
        pins = [r for r in bpy if r.marker and r.marker.evaluate({"python_version": python, "extra": "render"})]
        versions = [str(s.version) for r in pins for s in r.specifier if s.operator == "=="]
        assert len(versions) == len(pins) <= 1, (python, pins)
        assert [_bpy_python(v) for v in versions] == ([] if python == "3.12" else [python]), (python, versions)
    # The pins are Blenders the suite runs: the test cluster's (3.11) and the extension matrix's (3.13).
    from tests.blender.bpy_builds import MATRIX
    assert {str(s.version) for r in bpy for s in r.specifier} <= {b.version for b in MATRIX}
