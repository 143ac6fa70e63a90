"""Shared checks for tests: real images, real files."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from keyring.backend import KeyringBackend
from PIL import Image

from tests import deps_layout

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SCRIPT = REPO / "examples" / "make_sample.py"
SAMPLE_SIZE = (192, 108)


def make_sample(directory: Path) -> Path:
    """A fresh sample scene (with its external checker texture) built by the shipped generator."""
    subprocess.run([sys.executable, str(SAMPLE_SCRIPT), str(directory)], check=True, capture_output=True,
                   timeout=300)
    return directory / "sample.blend"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_frame(path: Path, size: tuple[int, int] = SAMPLE_SIZE) -> None:
    """A valid PNG of the scene's size, not blank, with the red and green of the checker texture."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
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
