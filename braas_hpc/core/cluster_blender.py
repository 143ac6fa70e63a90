"""Blender on a cluster: downloaded there (SHA-256 checked, resumable), uploaded from here, or named.

Archives unpack into `<workdir>/braas-hpc-<user>/blender/<archive name>/`, which holds a `.braas-installed`
stamp once complete: the archive's SHA-256 and a hash of the unpacked tree (jobs.TREE_HASH_SH). A second
install of the same archive is a no-op only when the tree still has that hash; the hash is recorded
here too, and every job recomputes it before it starts that Blender (schedulers.base.trust_lines).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import posixpath
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from . import progress
from .errors import BraasError, UsageError
from .jobs import SHA256_HEX, TREE_HASH_SH
from .paths import config_dir, private_dir, write_private
from .presets import Preset
from .transport import Transport
from .transport.base import sha256_file

ARCHIVE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._+-]*)\.(tar\.xz|tar\.gz|tgz|tar\.bz2|tar\.zst|tar)$")
MODULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+/-]*$")
X86_NAMES = re.compile(r"x64|x86[_-]64|amd64|linux64", re.I)


# ---- the Blender recorded for a preset (what jobs start) -------------------------------------------


@dataclass(frozen=True)
class InstalledBlender:
    """What `install` recorded for a preset: the command job scripts start, and lines run before it."""

    blender: str
    env: tuple[str, ...] = ()
    source: dict[str, str] = field(default_factory=dict)
    version: str = ""  # what `blender --version` printed on the login node, when it ran there
    tree: str = ""  # the directory braas-hpc unpacked it into (not for a path or module the user names)
    tree_sha256: str = ""  # that directory's hash (jobs.TREE_HASH_SH), checked by every job

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "env": list(self.env)}


def record_path(preset_name: str) -> Path:
    return config_dir() / "installed" / f"{preset_name}.json"


def installed_blender(preset_name: str) -> InstalledBlender | None:
    path = record_path(preset_name)
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return InstalledBlender(data["blender"], tuple(data.get("env", ())), data.get("source", {}),
                            data.get("version", ""), data.get("tree", ""), data.get("tree_sha256", ""))


def record_blender(preset_name: str, installed: InstalledBlender) -> Path:
    path = record_path(preset_name)
    private_dir(path.parent)
    temp = path.with_suffix(".part")
    write_private(temp, json.dumps({**installed.to_json(), "recorded": time.time()}, indent=1))
    temp.replace(path)
    return path


# ---- installing it ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlenderSource:
    """Exactly one of: a URL with its SHA-256, a local archive, a path on the cluster, a module."""

    url: str = ""
    sha256: str = ""
    upload: Path | None = None
    path: str = ""
    module: str = ""

    def kind(self) -> str:
        given = [k for k, v in (("url", self.url), ("upload", self.upload), ("path", self.path),
                                ("module", self.module)) if v]
        if len(given) > 1:
            raise UsageError(f"give one Blender source, not {' and '.join(given)}")
        return given[0] if given else ""


@dataclass(frozen=True)
class BlenderReport:
    installed: InstalledBlender
    directory: str = ""
    changed: bool = False  # False: it was there already (or a path/module was only recorded)
    downloaded_bytes: int = 0  # an upload's size
    resumed_from: int = 0  # bytes a download found from an earlier, interrupted run


def archive_name(name: str) -> str:
    """The directory an archive unpacks into, from its file name; anything odd is refused."""
    match = ARCHIVE.match(name)
    if not match:
        raise UsageError(f"{name!r} is not a Blender archive name (expected e.g. blender-4.5.4-linux-x64.tar.xz)")
    return match.group(1)


def _check_arch(preset: Preset, name: str) -> None:
    arches = {preset.arch, *(p.arch for p in preset.partitions.values() if p.arch)}
    if "aarch64" in arches and X86_NAMES.search(name):
        raise UsageError(f"preset {preset.name} has aarch64 nodes and {name} is an x86-64 build; give "
                         f"--blender-path or --blender-module instead. {preset.blender_note}".strip())


# Download into downloads/<file>.part, resuming; check SHA-256; rename. Exit 5 + "mismatch <got>" when it differs.
_FETCH = r"""
set -u
url=$1 file=$2 want=$3 part="$2.part"
mkdir -p "$(dirname "$file")" || exit 3
if [ -f "$file" ] && [ "$(sha256sum "$file" | cut -d' ' -f1)" = "$want" ]; then echo present; exit 0; fi
if [ -f "$part" ] && [ "$(sha256sum "$part" | cut -d' ' -f1)" = "$want" ]; then mv -f "$part" "$file"; exit 0; fi
start=$(stat -c %s "$part" 2>/dev/null || echo 0)
if command -v curl >/dev/null 2>&1; then
  curl -fsSL --retry 3 -C - -o "$part" -- "$url"; rc=$?
  if [ "$rc" = 33 ] || [ "$rc" = 36 ]; then rm -f "$part"; start=0; curl -fsSL --retry 3 -o "$part" -- "$url"; rc=$?; fi
elif command -v wget >/dev/null 2>&1; then
  wget -q -c -O "$part" -- "$url"; rc=$?
else
  echo "neither curl nor wget is on the cluster" >&2; exit 3
fi
[ "$rc" = 0 ] || { echo "download of $url failed (exit $rc)" >&2; exit 3; }
got=$(sha256sum "$part" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then rm -f "$part"; echo "mismatch $got"; exit 5; fi
mv -f "$part" "$file"; echo "resumed-from $start"
"""

# Unpack into <dest>.unpack, take the archive's single top directory (or all of it), move it to <dest>.
_UNPACK = TREE_HASH_SH + r"""
set -u
file=$1 dest=$2 digest=$3 tmp="$2.unpack"
rm -rf "$tmp" && mkdir -p "$tmp" || exit 3
tar -xf "$file" -C "$tmp" || { rm -rf "$tmp"; echo "cannot unpack $file" >&2; exit 6; }
set -- "$tmp"/*
if [ "$#" = 1 ] && [ -d "$1" ]; then top=$1; else top=$tmp; fi
[ -x "$top/blender" ] || { rm -rf "$tmp"; echo "the archive has no blender executable at its top" >&2; exit 7; }
rm -rf "$dest" && mv "$top" "$dest" && rm -rf "$tmp" || exit 3
tree=$(braas_tree "$dest") && echo "$digest $tree" > "$dest/.braas-installed" && echo "tree $tree"
"""

# Prints "tree <hash>" when the stamp names this archive and the tree still has the hash it recorded.
_STAMPED = TREE_HASH_SH + r"""
dir=$1 want=$2
read -r archive tree < "$dir/.braas-installed" 2>/dev/null || exit 0
[ "$archive" = "$want" ] && [ -n "$tree" ] && [ "$(braas_tree "$dir")" = "$tree" ] && echo "tree $tree"
exit 0
"""


def _tree(stdout: str) -> str:
    words = stdout.split()
    return words[-1] if words[-2:-1] == ["tree"] and SHA256_HEX.match(words[-1]) else ""


async def _stamped(transport: Transport, directory: str, digest: str) -> str:
    """The tree's hash when this archive is installed there and its files are unchanged, else ""
    (an older stamp without a tree hash, a changed file: it is unpacked again)."""
    done = await transport.run(["sh", "-c", _STAMPED, "sh", directory, digest], timeout=600)
    return _tree(done.stdout)


async def _version(transport: Transport, argv: list[str]) -> str:
    done = await transport.run(argv, check=False, timeout=120)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("Blender ")]
    return lines[0].strip() if done.exit_status == 0 and lines else ""


async def _unpack(transport: Transport, archive: str, directory: str, digest: str) -> str:
    progress.report("unpacking Blender on the cluster")
    done = await transport.run(["sh", "-c", _UNPACK, "sh", archive, directory, digest], timeout=1800)
    tree = _tree(done.stdout)
    if not tree:
        raise BraasError(f"unpacking Blender into {directory} gave no tree hash: {done.stderr.strip()}")
    return tree


async def from_url(transport: Transport, preset: Preset, root: str, url: str, digest: str) -> BlenderReport:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"Blender URL {url!r} must be an http(s) link")
    digest = digest.lower()
    if not SHA256_HEX.match(digest):
        raise UsageError("--blender-sha256 must be the archive's SHA-256 (64 hex digits), e.g. from "
                         "download.blender.org's .sha256 file")
    file_name = posixpath.basename(parts.path)
    name = archive_name(file_name)
    _check_arch(preset, file_name)
    directory = posixpath.join(root, "blender", name)
    tree = await _stamped(transport, directory, digest)
    if tree:
        return await _report(transport, directory, tree, url=url, changed=False)
    archive = posixpath.join(root, "blender", "downloads", file_name)
    progress.report(f"downloading {file_name} on the cluster")  # curl there: no byte count comes back
    done = await transport.run(["sh", "-c", _FETCH, "sh", url, archive, digest], check=False, timeout=3600)
    if done.exit_status == 5:
        got = done.stdout.split()[-1] if done.stdout.split() else "?"
        raise BraasError(f"refused {file_name}: its SHA-256 is {got}, not the {digest} given; the download "
                         "was removed and nothing was installed")
    if done.exit_status != 0:
        raise BraasError(f"downloading Blender on the cluster failed: {done.stderr.strip() or done.stdout.strip()}")
    tree = await _unpack(transport, archive, directory, digest)
    await transport.run(["rm", "-f", "--", archive])  # the unpacked copy is what jobs use
    report = await _report(transport, directory, tree, url=url, changed=True)
    words = done.stdout.split()
    resumed = int(words[-1]) if words[-2:-1] == ["resumed-from"] and words[-1].isdigit() else 0
    return dataclasses.replace(report, resumed_from=resumed)


async def from_upload(transport: Transport, preset: Preset, root: str, local: Path) -> BlenderReport:
    if not local.is_file():
        raise UsageError(f"Blender archive not found: {local}")
    name = archive_name(local.name)
    _check_arch(preset, local.name)
    digest = await asyncio.to_thread(sha256_file, local)
    directory = posixpath.join(root, "blender", name)
    tree = await _stamped(transport, directory, digest)
    if tree:
        return await _report(transport, directory, tree, upload=str(local), changed=False)
    archive = posixpath.join(root, "blender", "downloads", local.name)
    await transport.run(["mkdir", "-p", "--", posixpath.dirname(archive)])
    await transport.put(local, archive, lambda done, total: progress.report(f"uploading {local.name}", done, total),
                        verify=True)  # resumes a part left by a dropped connection
    tree = await _unpack(transport, archive, directory, digest)
    await transport.run(["rm", "-f", "--", archive])
    return await _report(transport, directory, tree, upload=str(local), changed=True, sent=local.stat().st_size)


async def _report(transport: Transport, directory: str, tree: str, changed: bool, sent: int = 0,
                  **source: str) -> BlenderReport:
    blender = posixpath.join(directory, "blender")
    version = await _version(transport, [blender, "--version"])
    if not version:
        raise BraasError(f"{blender} does not run on the login node (wrong architecture or a broken archive)")
    installed = InstalledBlender(blender, (), dict(source), version, directory, tree)
    return BlenderReport(installed, directory, changed, sent)


async def named(transport: Transport, preset: Preset, path: str, module: str) -> BlenderReport:
    """A path or site module the user names: recorded, and tried on the login node where possible."""
    if module:
        if not MODULE.match(module):
            raise UsageError(f"module name {module!r} may hold only letters, digits and . _ + / -")
        env = (f"module load {module}",)
        version = await _version(transport, ["bash", "-lc", 'module load "$1" && blender --version', "bash", module])
        return BlenderReport(InstalledBlender(path or "blender", env, {"module": module}, version))
    if not path.startswith("/"):
        raise UsageError(f"--blender-path {path!r} must be an absolute path on the cluster")
    exists = await transport.run(["test", "-x", path], check=False)
    if exists.exit_status != 0:
        raise UsageError(f"{path} is not an executable file on the cluster")
    # It may be built for the compute nodes only (aarch64 nodes behind x86 login nodes): a failed run is
    # reported, not fatal.
    version = await _version(transport, [path, "--version"])
    return BlenderReport(InstalledBlender(path, (), {"path": path}, version))


async def install_blender(transport: Transport, preset: Preset, root: str, source: BlenderSource) -> BlenderReport:
    kind = source.kind()
    if kind == "url":
        if not source.sha256:
            raise UsageError("a Blender URL needs its checksum: --blender-sha256 HEX")
        return await from_url(transport, preset, root, source.url, source.sha256)
    if kind == "upload":
        assert source.upload is not None
        return await from_upload(transport, preset, root, source.upload.expanduser())
    return await named(transport, preset, source.path, source.module)
