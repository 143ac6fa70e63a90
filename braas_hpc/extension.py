"""`braas-hpc extension build`: the installable Blender extension zips, one per platform, each with
the wheels the add-on needs (asyncssh, paramiko, scp, blender-asset-tracer, platformdirs and their
dependencies) so it installs offline.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .core.errors import BraasError, UsageError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "braas_hpc"
CLUSTER_SCRIPTS = ROOT / "cluster_scripts"
MANIFEST = ROOT / "blender_manifest.toml"
REQUIREMENTS = ("asyncssh==2.24.1", "paramiko==5.1.0", "scp==0.16.2", "blender-asset-tracer==1.23",
                "platformdirs==4.14.7", "tomli-w==1.2.0")
# pip platform tags per Blender extension platform (Blender 4.2+ bundles CPython 3.11).
PLATFORM_TAGS = {
    "linux-x64": ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"),
    "windows-x64": ("win_amd64",),
    "macos-arm64": ("macosx_11_0_arm64", "macosx_10_9_universal2"),
    "macos-x64": ("macosx_10_9_x86_64", "macosx_10_12_x86_64", "macosx_10_9_universal2"),
}
_SKIP = re.compile(r"(__pycache__|\.pyc$|/cli\.py$|/prompts\.py$)")  # the CLI's own parts stay out


def download_wheels(platform: str, target: Path) -> list[Path]:
    tags = [arg for tag in PLATFORM_TAGS[platform] for arg in ("--platform", tag)]
    argv = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *tags, "--python-version", "3.11",
            "--implementation", "cp", "-d", str(target), *REQUIREMENTS]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise BraasError(f"pip could not fetch the wheels for {platform}:\n{done.stderr[-2000:]}")
    return sorted(target.glob("*.whl"))


def manifest_for(platform: str, wheels: list[Path]) -> str:
    text = MANIFEST.read_text()
    text = re.sub(r"^platforms = .*$", f'platforms = ["{platform}"]', text, flags=re.M)
    listed = ", ".join(f'"./wheels/{w.name}"' for w in wheels)
    return text.replace("\n[permissions]", f"\nwheels = [{listed}]\n\n[permissions]", 1)


def build(out: Path, platforms: list[str]) -> list[Path]:
    unknown = sorted(set(platforms) - set(PLATFORM_TAGS))
    if unknown:
        raise UsageError(f"unknown platform(s) {', '.join(unknown)}; choose from {', '.join(PLATFORM_TAGS)}")
    out.mkdir(parents=True, exist_ok=True)
    version = re.search(r'^version = "([^"]+)"', MANIFEST.read_text(), re.M)
    built = []
    for platform in platforms:
        with tempfile.TemporaryDirectory(prefix="braas-ext-") as temp:
            wheels = download_wheels(platform, Path(temp))
            target = out / f"braas_hpc-{version.group(1) if version else 'dev'}-{platform}.zip"
            with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr("blender_manifest.toml", manifest_for(platform, wheels))
                for path in sorted(PACKAGE.rglob("*")):
                    name = path.relative_to(PACKAGE).as_posix()
                    if path.is_file() and not _SKIP.search(f"/{name}"):
                        archive.write(path, name)
                for path in sorted(CLUSTER_SCRIPTS.glob("*.py")):
                    archive.write(path, f"cluster_scripts/{path.name}")
                for wheel in wheels:
                    archive.write(wheel, f"wheels/{wheel.name}")
            built.append(target)
    return built
