"""The cluster scripts under `<workdir>/braas-hpc-<user>/scripts/`: from this package or a site's git.

The scripts come from this package (no git, no internet on the cluster), into a directory named by
the release and a hash of every script, so a job never meets a stale copy. Installing twice sends
nothing the second time. A site that keeps its own scripts names a git repository and branch in its
preset instead.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import posixpath
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from . import VERSION
from .errors import UsageError
from .paths import data_dir, private_dir
from .presets import Preset
from .transport import Transport

# Beside the package in a checkout or pip install; inside it in the Blender extension zip.
RENDER_TASK = next((p for p in (Path(__file__).resolve().parents[i] / "cluster_scripts" / "render_task.py"
                                for i in (2, 1)) if p.is_file()),
                   Path(__file__).resolve().parents[2] / "cluster_scripts" / "render_task.py")
MANIFEST = "MANIFEST.json"
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")


CORE_KIT = "braas_core.zip"
_PACKAGE = Path(__file__).resolve().parents[1]  # braas_hpc/
# What the finish step's own recovery (core.rounds.recover_here) imports on the cluster: the modules that
# plan a round and write its scripts, as they are here, so the cluster writes what this computer would.
_KIT_MODULES = ("__init__.py", "core/__init__.py", "core/errors.py", "core/frames.py", "core/jobs.py",
                "core/scene_settings.py", "core/presets.py", "core/hostnames.py", "core/paths.py", "core/markers.py",
                "core/planning.py", "core/rounds.py", "core/split.py")


def _kit_files() -> list[tuple[str, Path]]:
    files = [(f"braas_hpc/{name}", _PACKAGE / name) for name in _KIT_MODULES]
    schedulers = sorted((_PACKAGE / "core" / "schedulers").glob("*.py"))
    files += [(f"braas_hpc/core/schedulers/{p.name}", p) for p in schedulers]
    platform = Path(platformdirs.__file__).parent
    files += [(f"platformdirs/{p.name}", p) for p in sorted(platform.glob("*.py"))]
    return files


@functools.cache
def core_kit_bytes() -> bytes:
    """The kit as a zip Python imports from: stored, not compressed, with fixed times, so the same
    sources give the same bytes (and the same scripts version) in every Python that builds it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as kit:
        for name, path in _kit_files():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            kit.writestr(info, path.read_bytes())
    return buffer.getvalue()


@functools.cache
def _core_kit() -> Path:
    data = core_kit_bytes()
    path = private_dir(data_dir() / "kit") / f"braas_core-{hashlib.sha256(data).hexdigest()[:16]}.zip"
    if not path.is_file() or path.read_bytes() != data:
        temp = path.with_suffix(".part")
        temp.write_bytes(data)
        temp.replace(path)
    return path


def _cluster_scripts() -> dict[str, Path]:
    return {p.name: p for p in sorted(RENDER_TASK.parent.glob("*.py")) if p.name != "__init__.py"}


def script_source(name: str) -> str:
    """A shipped cluster script's text, for running it inline (`python3 -c`) where it is not installed."""
    return _cluster_scripts()[name].read_text(encoding="utf-8")


def shipped_scripts() -> dict[str, Path]:
    """Every file installed on a cluster, by name: the cluster scripts and the core kit."""
    return {**_cluster_scripts(), CORE_KIT: _core_kit()}


@functools.cache
def _digests() -> dict[str, str]:
    # The kit by its bytes, without writing it out: a digest is asked for by dry runs too.
    return {**{name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in _cluster_scripts().items()},
            CORE_KIT: hashlib.sha256(core_kit_bytes()).hexdigest()}


def shipped_digests() -> dict[str, str]:
    """The SHA-256 of every shipped cluster script, by name."""
    return dict(_digests())


@functools.cache
def scripts_version() -> str:
    """The scripts' directory name: the release plus a hash of every script, so a changed script never
    meets a stale copy installed under the same release number."""
    whole = hashlib.sha256(json.dumps(_digests(), sort_keys=True).encode()).hexdigest()
    return f"{VERSION}-{whole[:12]}"


def manifest_text() -> str:
    return json.dumps({"version": scripts_version(), "braas_hpc": VERSION, "files": _digests()}, indent=1,
                      sort_keys=True) + "\n"


@dataclass(frozen=True)
class ScriptsReport:
    directory: str
    version: str
    uploaded: tuple[str, ...] = ()  # files sent now (missing or different on the cluster)
    unchanged: tuple[str, ...] = ()
    source: str = "package"  # "package" or the git URL

    @property
    def changed(self) -> bool:
        return bool(self.uploaded)


# Prints "<sha256>  <name>" for each named file that exists in the directory; nothing when it does not.
_HASH_SCRIPT = 'cd "$1" 2>/dev/null || exit 0; shift; sha256sum -- "$@" 2>/dev/null; exit 0'


async def remote_digests(transport: Transport, directory: str, names: list[str]) -> dict[str, str]:
    done = await transport.run(["sh", "-c", _HASH_SCRIPT, "sh", directory, *names], check=False)
    found = {}
    for line in done.stdout.splitlines():
        digest, _, name = line.partition("  ")
        if name in names:
            found[name] = digest
    return found


async def ensure_scripts(transport: Transport, root: str) -> ScriptsReport:
    """Install or repair this release's scripts under `<root>/scripts/<version>/`: one command checks
    every file's SHA-256; only files missing or different are sent; the manifest is written last."""
    directory = posixpath.join(root, "scripts", scripts_version())
    wanted = {**_digests(), MANIFEST: hashlib.sha256(manifest_text().encode()).hexdigest()}
    present = await remote_digests(transport, directory, sorted(wanted))
    stale = [name for name in sorted(wanted) if present.get(name) != wanted[name]]
    if not stale:
        return ScriptsReport(directory, scripts_version(), (), tuple(sorted(wanted)))
    await transport.run(["mkdir", "-p", "--", directory])
    files = shipped_scripts()
    with tempfile.TemporaryDirectory(prefix="braas-hpc-") as temp:
        manifest = Path(temp) / MANIFEST
        manifest.write_text(manifest_text())
        # The manifest goes last: when it is there, every script before it is complete.
        for name in [n for n in stale if n != MANIFEST] + [MANIFEST]:
            await transport.put(files.get(name, manifest), posixpath.join(directory, name), verify=True)
    return ScriptsReport(directory, scripts_version(), tuple(stale),
                         tuple(n for n in sorted(wanted) if n not in stale))


def scripts_place(preset: Preset, root: str) -> str:
    """Where this computer records the cluster scripts it saw installed (store.HashCache.scripts_seen)."""
    return f"{preset.user}@{preset.host}:{preset.port}{root}"


def git_scripts_dir(root: str, branch: str) -> str:
    return posixpath.join(root, "scripts", "git-" + re.sub(r"[^A-Za-z0-9._-]", "_", branch))


def check_git_source(preset: Preset) -> None:
    if preset.scripts_git.startswith("-") or not preset.scripts_git.strip():
        raise UsageError(f"preset {preset.name}: scripts_git {preset.scripts_git!r} is not a git URL")
    if not _BRANCH.match(preset.scripts_branch) or ".." in preset.scripts_branch:
        raise UsageError(f"preset {preset.name}: scripts_branch {preset.scripts_branch!r} is not a branch name")


# Clone once; later runs fetch the branch and move to it. "changed" or "unchanged" on stdout.
_GIT_SCRIPT = r"""
set -eu
url=$1 branch=$2 dir=$3
if [ ! -d "$dir/.git" ]; then
  rm -rf "$dir.clone"; git clone --quiet --depth 1 --branch "$branch" -- "$url" "$dir.clone"
  mv "$dir.clone" "$dir"; echo changed; exit 0
fi
before=$(git -C "$dir" rev-parse HEAD)
git -C "$dir" fetch --quiet --depth 1 origin "$branch"
git -C "$dir" reset --quiet --hard FETCH_HEAD
[ "$before" = "$(git -C "$dir" rev-parse HEAD)" ] && echo unchanged || echo changed
"""


async def git_scripts(transport: Transport, preset: Preset, root: str, update: bool = True) -> ScriptsReport:
    """The site's own scripts from its git repository and branch (cloned, or brought up to date)."""
    check_git_source(preset)
    directory = git_scripts_dir(root, preset.scripts_branch)
    if not update and await remote_digests(transport, directory, ["render_task.py"]):
        return ScriptsReport(directory, preset.scripts_branch, (), ("render_task.py",), preset.scripts_git)
    await transport.run(["mkdir", "-p", "--", posixpath.join(root, "scripts")])
    done = await transport.run(["sh", "-c", _GIT_SCRIPT, "sh", preset.scripts_git, preset.scripts_branch, directory],
                               timeout=600)
    if not await remote_digests(transport, directory, ["render_task.py"]):
        raise UsageError(f"the git repository {preset.scripts_git} (branch {preset.scripts_branch}) has no "
                         "render_task.py at its top level")
    changed = done.stdout.strip().endswith("changed") and not done.stdout.strip().endswith("unchanged")
    return ScriptsReport(directory, preset.scripts_branch, ("(git)",) if changed else (), (), preset.scripts_git)


async def scripts_for(transport: Transport, preset: Preset, root: str, update: bool = True) -> ScriptsReport:
    """What a submission calls: the package's scripts, or the site's git scripts when it names them."""
    if preset.scripts_git:
        return await git_scripts(transport, preset, root, update)
    return await ensure_scripts(transport, root)
