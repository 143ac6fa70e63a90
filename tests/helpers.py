"""Shared checks for tests: real images, real files."""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from keyring.backend import KeyringBackend
from PIL import Image

from tests import deps_layout

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SCRIPT = REPO / "examples" / "make_sample.py"
SAMPLE_SIZE = (192, 108)
T = TypeVar("T")


_built_sample: list[Path] = []  # the one sample this process built, copied for every test that needs one


def make_sample(directory: Path, fresh: bool = False) -> Path:
    """The sample scene (with its external checker texture) in `directory`: a copy of the one this test
    process built with the shipped generator, or with `fresh` a new build. Builds differ in their bytes,
    so a fresh one is what a test needs when the cluster's store must not hold the scene yet."""
    if fresh or not _built_sample:
        if fresh:
            return _build_sample(directory)
        _built_sample.append(_build_sample(Path(tempfile.mkdtemp(prefix="braas-sample-")) / "sample"))
        atexit.register(shutil.rmtree, _built_sample[0].parent.parent, True)
    # Plain copies, new times: like a scene just saved, not an archive unpacked with its old times.
    shutil.copytree(_built_sample[0].parent, directory, copy_function=shutil.copyfile, dirs_exist_ok=True)
    return directory / "sample.blend"


def _build_sample(directory: Path) -> Path:
    subprocess.run([sys.executable, str(SAMPLE_SCRIPT), str(directory)], check=True, capture_output=True,
                   timeout=300)
    return directory / "sample.blend"


def eventually(probe: Callable[[], T], done: Callable[[T], bool], what: str, timeout: float = 120,
               every: float = 0.5) -> T:
    """Call `probe` until `done` says its answer is complete, and return that answer: for state that
    settles after the event a test waited for (slurmdbd's record of a job that has just ended, a file
    written by a step that runs after it). Fails, naming `what` and the last answer, after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if done(answer):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not there after {timeout:.0f} s; last answer: {answer!r}")
        time.sleep(every)


def cluster_file_when_written(remote: Callable[[str], subprocess.CompletedProcess[str]], path: str,
                              timeout: float = 300) -> str:
    """The text of a file on the cluster once a later step (the finish job) has written it, read over SSH
    with the `remote` fixture."""
    return eventually(lambda: remote(f"cat {path}"), lambda done: done.returncode == 0, f"{path} to be written",
                      timeout=timeout, every=2).stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_frame(path: Path, size: tuple[int, int] = SAMPLE_SIZE, kind: str = "PNG") -> None:
    """A valid image (PNG unless told) of the scene's size, not blank, with the red and green of the checker."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == kind
        assert image.size == size
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=size[0] * size[1])
    assert colours is not None and len(colours) > 20, f"{path} looks blank"
    width, height = size
    # The floor fills the bottom rows of the frame: they must show the texture's red and green squares.
    bottom = [rgb.getpixel((x, y)) for y in range(height - 12, height) for x in range(0, width, 3)]
    reds = sum(1 for r, g, b in bottom if r > 150 and g < 80 and b < 80)
    greens = sum(1 for r, g, b in bottom if g > 130 and r < 80 and b < 80)
    assert reds > len(bottom) // 10 and greens > len(bottom) // 10, (
        f"{path}: the checker texture did not reach the render ({reds} red, {greens} green of {len(bottom)})"
    )


class Answers:
    """A Prompts object for tests: fixed answers, and a record of every question the user was asked."""

    def __init__(self, passphrase: str | None = None, code: Callable[[], str] | None = None) -> None:
        self._passphrase = passphrase
        self._code = code
        self.asked: list[str] = []

    def passphrase(self, key_file: str) -> str | None:
        self.asked.append(f"passphrase {key_file}")
        return self._passphrase

    def kbdint(self, name: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str] | None:
        self.asked.append(f"kbdint {[text for text, _ in prompts]}")
        return [self._code() if self._code else "" for _ in prompts]


class MemoryKeyring(KeyringBackend):
    """An OS keyring for tests: the real keyring API, kept in memory (no OS keyring runs here)."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        del self.items[(service, username)]


# Changes the sample's render settings and saves it under a new name (run by a bpy Python).
_VARIANT = r"""
import json, sys
import bpy
source, target, settings = sys.argv[-3], sys.argv[-2], json.loads(sys.argv[-1])
bpy.ops.wm.open_mainfile(filepath=source)
bpy.context.preferences.filepaths.save_version = 0
scene = bpy.context.scene
render, image = scene.render, scene.render.image_settings
for key in ("frame_start", "frame_end", "frame_step"):
    if key in settings:
        setattr(scene, key, settings[key])
for key in ("engine", "resolution_x", "resolution_y", "resolution_percentage", "use_multiview"):
    if key in settings:
        setattr(render, key, settings[key])
if "samples" in settings:
    scene.cycles.samples = settings["samples"]
if "file_format" in settings:
    if hasattr(image, "media_type"):
        image.media_type = {"OPEN_EXR_MULTILAYER": "MULTI_LAYER_IMAGE", "FFMPEG": "VIDEO"}.get(
            settings["file_format"], "IMAGE")
    image.file_format = settings["file_format"]
for key in ("color_depth", "exr_codec", "quality", "tiff_codec", "color_mode", "use_exr_interleave", "use_preview",
            "views_format"):
    if key in settings and hasattr(image, key):  # use_exr_interleave: Blender 5.0+
        setattr(image, key, settings[key])
if "view_transform" in settings:
    scene.view_settings.view_transform = settings["view_transform"]
for name, layer in settings.get("view_layers", {}).items():
    view_layer = scene.view_layers.get(name) or scene.view_layers.new(name)
    for key, value in layer.items():
        setattr(view_layer, key, value)
if "scene_name" in settings:
    scene.name = settings["scene_name"]
if settings.get("other_scene"):  # a second scene with settings of its own; the window shows it when "active"
    other = bpy.data.scenes.new(settings["other_scene"]["name"])
    other.render.engine = settings["other_scene"]["engine"]
    other.frame_start, other.frame_end = 50, 60
    if settings["other_scene"].get("active"):
        bpy.context.window.scene = other
bpy.ops.wm.save_as_mainfile(filepath=target, compress=settings.get("compress", False))
"""

def bpy_site(version: str) -> str:
    """"" for this Python's own bpy (4.5), else the directory holding that bpy version for this Python
    (installed once: tests/blender/bpy_builds.py), for PYTHONPATH."""
    if not version:
        return ""
    from tests.blender.bpy_builds import MATRIX

    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (build,) = [b for b in MATRIX if b.version == version and b.python == python]
    return str(build.site())


def make_variant(sample: Path, target: Path, bpy_path: str = "", **settings: object) -> Path:
    """A copy of the sample scene with other render settings, saved by the bpy given (default: this Python's);
    the texture is found through its relative path when `target` sits beside the sample."""
    import json

    env = {**os.environ, "PYTHONPATH": bpy_path} if bpy_path else None
    done = subprocess.run([sys.executable, "-c", _VARIANT, str(sample), str(target), json.dumps(settings)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and target.is_file(), done.stderr[-3000:]
    return target


def exr_header(path: Path) -> tuple[dict[str, int], tuple[int, int], int]:
    """Channels (name -> pixel type: 1 half, 2 float), size and compression (3 ZIP, 4 PIZ, ...) from an
    OpenEXR header, read by hand (Pillow cannot open EXR). A multi-part file (what Blender 5 writes
    when "Interleave" is off) has one header per part: the channels of every part are listed."""
    import struct

    head = path.read_bytes()[: 1 << 20]
    assert head[:4] == b"\x76\x2f\x31\x01", f"{path} is no OpenEXR file"
    multipart = bool(struct.unpack_from("<i", head, 4)[0] & 0x1000)
    pos, parts = 8, []
    while head[pos] != 0:
        attributes = {}
        while head[pos] != 0:
            name_end = head.index(b"\0", pos)
            type_end = head.index(b"\0", name_end + 1)
            (size,) = struct.unpack_from("<i", head, type_end + 1)
            attributes[head[pos:name_end].decode()] = head[type_end + 5 : type_end + 5 + size]
            pos = type_end + 5 + size
        parts.append(attributes)
        pos += 1  # the null that ends this header
        if not multipart:
            break
    channels: dict[str, int] = {}
    for attributes in parts:
        raw, i = attributes["channels"], 0
        while raw[i] != 0:  # name\0, pixel type (int32), linearity, reserved, x/y sampling: 16 bytes after the name
            end = raw.index(b"\0", i)
            channels[raw[i:end].decode()] = struct.unpack_from("<i", raw, end + 1)[0]
            i = end + 1 + 16
    x0, y0, x1, y1 = struct.unpack("<4i", parts[0]["dataWindow"])
    return channels, (x1 - x0 + 1, y1 - y0 + 1), parts[0]["compression"][0]


DEPS_SCRIPT = REPO / "tests" / "deps_scene.py"


def make_deps_scene(directory: Path, packable: bool = False) -> Path:
    """A scene needing one file of each kind (tests/deps_layout.py), or only the kinds Blender packs."""
    argv = [sys.executable, str(DEPS_SCRIPT), str(directory), *(["--packable"] if packable else [])]
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    return directory / "deps.blend"


def deps_cells(path: Path, kinds: list[str]) -> dict[str, bool]:
    """For each kind: does its cell of a rendered deps scene show the colour only its file brings?"""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    cell = rgb.width // deps_layout.COLUMNS
    found = {}
    for kind in kinds:
        column, row = deps_layout.CELLS[kind]
        want = deps_layout.COLOURS[kind]
        inner = [rgb.getpixel((column * cell + x, row * cell + y)) for x in range(6, cell - 6)
                 for y in range(6, cell - 6)]
        close = sum(1 for px in inner if max(abs(a - b) for a, b in zip(px, want, strict=True)) <= 12)
        found[kind] = close >= len(inner) // 2
    return found


@contextmanager
def temporary_user(name: str, group: str = "") -> Iterator[str]:
    """A second Unix account for the tests (no home, no login shell; in `group` when given): created when
    missing and removed afterwards, unless it was there before. The suite's two processes may both hold
    it at once: the last holder removes it (holders are counted, under a lock, in a file beside it)."""
    book = Path(tempfile.gettempdir()) / f"braas-tests-user-{name}.json"

    def _update(change: Callable[[dict], None]) -> dict:
        with open(book.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = json.loads(book.read_text()) if book.exists() else {}
            holders = [pid for pid in state.get("holders", []) if _alive(pid)]  # a killed run's are gone
            state = {"holders": holders, "created": bool(state.get("created")) and bool(holders)}
            change(state)
            book.write_text(json.dumps(state))
            return state

    def take(state: dict) -> None:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                            "/usr/sbin/nologin", *(["-g", group] if group else []), name], check=True,
                           capture_output=True)
            state["created"] = True
        state["holders"].append(os.getpid())

    def give_back(state: dict) -> None:
        state["holders"].remove(os.getpid())
        if not state["holders"] and state["created"]:
            subprocess.run(["userdel", name], check=False, capture_output=True)
            state["created"] = False

    _update(take)
    try:
        yield name
    finally:
        _update(give_back)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def partition_closed(slurm_conf: Path, partition: str = "qcpu") -> Iterator[None]:
    """Jobs submitted inside queue on `partition` without starting (State=DOWN), whatever the
    scheduler's pace: for a test that must see or touch a job before it runs. Opened again on leaving."""
    update = ["scontrol", "update", f"PartitionName={partition}"]
    env = {**os.environ, "SLURM_CONF": str(slurm_conf)}
    subprocess.run([*update, "State=DOWN"], env=env, check=True, capture_output=True, timeout=60)
    try:
        yield
    finally:
        subprocess.run([*update, "State=UP"], env=env, check=True, capture_output=True, timeout=60)
