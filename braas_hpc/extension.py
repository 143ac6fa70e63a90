"""`braas-hpc extension build`: the installable Blender extensions, BRaaS-HPC and BRaaS-HPC Interactive,
one zip each per platform.

Both add-ons run on one core, so both zips carry the same wheel of this project (`braas_hpc`,
`braas_hpc_interactive`, `cluster_scripts`) and the wheels it needs (asyncssh, paramiko, scp,
blender-asset-tracer, platformdirs, imageio-ffmpeg with its ffmpeg, and their dependencies): they install
offline, each works alone, and side by side Blender keeps one copy of the shared wheel, so the two add-ons
use the same modules: one SSH connection pool and BRaaS-HPC's passphrase and one-time-code popups for both.
The extension's own package is a two-function `__init__.py` that hands register/unregister to the wheel's package.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .core.errors import BraasError, UsageError

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ("asyncssh==2.24.1", "paramiko==5.1.0", "scp==0.16.2", "blender-asset-tracer==1.23",
                "platformdirs==4.14.7", "tomli-w==1.2.0", "imageio-ffmpeg==0.6.0")
# The Pythons Blender bundles: 3.11 in 4.2 to 5.0, 3.13 from 5.1. Each zip carries wheels for both and
# Blender installs the ones for its own Python (it reads the versions from the wheel names).
PYTHON_VERSIONS = ("3.11", "3.13")
# pip platform tags per Blender extension platform. pip also accepts older macOS versions of a tag, so
# macosx_11_0_x86_64 takes the macosx_10_15_x86_64 wheels some dependencies (cffi 2) only publish;
# Blender 4.2+ needs macOS 11.2 anyway.
PLATFORM_TAGS = {
    "linux-x64": ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"),
    "windows-x64": ("win_amd64",),
    "macos-arm64": ("macosx_11_0_arm64", "macosx_10_9_universal2"),
    "macos-x64": ("macosx_11_0_x86_64", "macosx_10_9_universal2"),
}


@dataclass(frozen=True)
class Addon:
    package: str  # the top-level package in the core wheel, and the extension's id
    manifest: Path


ADDONS = (Addon("braas_hpc", ROOT / "blender_manifest.toml"),
          Addon("braas_hpc_interactive", ROOT / "braas_hpc_interactive" / "blender_manifest.toml"))

_SHELL = '''"""{name} as a Blender extension. Its code is the `{package}` package of the bundled braas-hpc
wheel, which the BRaaS-HPC extensions share (one copy of the core for both)."""


def register():
    import {package}

    {package}.register(addon_id=__package__)


def unregister():
    import {package}

    {package}.unregister()
'''


def download_wheels(platform: str, target: Path) -> list[Path]:
    """The dependency wheels for `platform`, for every Python in PYTHON_VERSIONS: pure-Python and
    stable-ABI wheels serve both and are kept once."""
    tags = [arg for tag in PLATFORM_TAGS[platform] for arg in ("--platform", tag)]
    wheels: dict[str, Path] = {}
    for python in PYTHON_VERSIONS:
        into = target / python
        argv = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
                *tags, "--python-version", python, "--implementation", "cp", "-d", str(into), *REQUIREMENTS]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise BraasError(f"pip could not fetch the wheels for {platform} (Python {python}):\n"
                             f"{done.stderr[-2000:]}")
        wheels.update((wheel.name, wheel) for wheel in into.glob("*.whl"))
    return sorted(wheels.values(), key=lambda wheel: wheel.name)


_NOT_PACKAGED = {"build", "dist", "tests", "bench", "docs", "examples", "frames"}  # at the top of the tree only


def _not_sources(directory: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n.startswith(".") or n == "__pycache__" or n.endswith(".egg-info")}
    return skip | (_NOT_PACKAGED & set(names) if Path(directory) == ROOT else set())


def core_wheel(target: Path) -> Path:
    """This project as a pure-Python wheel (what `pip install braas-hpc` would install), built from a
    clean copy of the sources: setuptools' build/ directory in the tree could add files deleted since."""
    with tempfile.TemporaryDirectory(prefix="braas-build-") as build_dir:
        source = Path(build_dir) / "src"
        shutil.copytree(ROOT, source, ignore=_not_sources)
        argv = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(target), str(source)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=build_dir)
    if done.returncode != 0:
        raise BraasError(f"pip could not build the braas-hpc wheel:\n{done.stderr[-2000:]}")
    (wheel,) = target.glob("braas_hpc-*.whl")
    return wheel


def manifest_for(manifest: Path, platform: str, wheels: list[Path]) -> str:
    text = manifest.read_text()
    text = re.sub(r"^platforms = .*$", f'platforms = ["{platform}"]', text, flags=re.M)
    listed = ", ".join(f'"./wheels/{w.name}"' for w in wheels)
    return text.replace("\n[permissions]", f"\nwheels = [{listed}]\n\n[permissions]", 1)


def _field(manifest: str, key: str) -> str:
    found = re.search(rf'^{key} = "([^"]+)"', manifest, re.M)
    if found is None:
        raise BraasError(f"the extension manifest has no {key}")
    return found.group(1)


def build(out: Path, platforms: list[str]) -> list[Path]:
    unknown = sorted(set(platforms) - set(PLATFORM_TAGS))
    if unknown:
        raise UsageError(f"unknown platform(s) {', '.join(unknown)}; choose from {', '.join(PLATFORM_TAGS)}")
    out.mkdir(parents=True, exist_ok=True)
    built = []
    with tempfile.TemporaryDirectory(prefix="braas-ext-") as temp:
        core = core_wheel(Path(temp) / "core")
        for platform in platforms:
            wheels = sorted([core, *download_wheels(platform, Path(temp) / platform)], key=lambda w: w.name)
            for addon in ADDONS:
                text = addon.manifest.read_text()
                target = out / f"{addon.package}-{_field(text, 'version')}-{platform}.zip"
                with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
                    archive.writestr("blender_manifest.toml", manifest_for(addon.manifest, platform, wheels))
                    archive.writestr("__init__.py", _SHELL.format(name=_field(text, "name"), package=addon.package))
                    for wheel in wheels:
                        archive.write(wheel, f"wheels/{wheel.name}")
                built.append(target)
    return built
