"""Transfers under faults on the real test cluster: the connection cut during a submit's upload and
during a download (a TCP proxy in front of the test cluster's sshd), and the local disk full during a
download (a tiny tmpfs mounted for the test).

After every fault: nothing half-written is taken for a store object or a frame, and a re-run completes
with every frame valid and equal to the cluster's copy (SHA-256). The counts go to docs/reliability.md;
each test prints its own line (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from braas_hpc import cli
from braas_hpc.core import monitor, transfer
from braas_hpc.core.errors import BraasError
from braas_hpc.core.jobs import FRAME_FILE, SHA256_HEX
from braas_hpc.core.paths import user_presets_dir
from braas_hpc.core.transport import pool
from braas_hpc.core.transport.base import PART_SUFFIX
from tests.helpers import check_frame, make_sample, sha256
from tests.testbed import testbed as tb
from tests.testbed.tcpproxy import TcpProxy

pytestmark = pytest.mark.testbed

# Client->server bytes a proxied connection may carry before it is cut. The packed sample is ~430 kB
# and the commands before the upload take a few kB, so every cut lands inside the store upload; the
# small ones also cut every reconnection before the file is through (the submit fails), the large ones
# let the resume finish it (the submit succeeds).
UPLOAD_CUTS = (40_000, 120_000, 250_000, 330_000, 400_000)
# Server->client bytes per connection during a download of four ~170 kB frames.
DOWNLOAD_CUTS = (30_000, 90_000, 200_000, 330_000, 520_000)
# Disk full: room for this many frames and a half, then no space left.
DISK_ROOM_FRAMES = (0, 1, 2, 3)

# Uncompressed 16-bit PNG: frames of ~170 kB instead of ~30 kB, so a cut lands inside a frame.
BIG_FRAMES = """
import bpy, sys
bpy.ops.wm.open_mainfile(filepath=sys.argv[-1])
settings = bpy.context.scene.render.image_settings
settings.color_depth, settings.compression = "16", 0
bpy.context.preferences.filepaths.save_version = 0
bpy.ops.wm.save_mainfile()
"""


class CutProxy(TcpProxy):
    """The testbed's proxy, which also cuts a connection after `drop_down_after` server->client bytes
    (read when a connection is accepted, like `drop_after_bytes`)."""

    drop_down_after: int | None = None

    async def _pump(self, link, reader, writer, limit, *, upstream):  # noqa: ANN001, ANN202 - as in the base
        await super()._pump(link, reader, writer, limit if upstream else self.drop_down_after, upstream=upstream)


@pytest.fixture(scope="module")
def proxied(testbed: tb.Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CutProxy, str]]:
    """A proxy in front of the cluster's sshd and a preset that connects through it."""
    proxy = CutProxy("127.0.0.1", testbed.ssh_port)
    proxy.start_in_thread()
    name = f"tb-faults-{secrets.token_hex(3)}"
    known = tmp_path_factory.mktemp("faults-hosts") / "known_hosts"
    pin = f"[127.0.0.1]:{testbed.ssh_port} "
    lines = [line.replace(pin, f"[127.0.0.1]:{proxy.port} ", 1)
             for line in testbed.known_hosts.read_text().splitlines() if line.startswith(pin)]
    assert lines, f"no pin for {pin} in {testbed.known_hosts}"
    known.write_text("\n".join(lines) + "\n")
    text = testbed.preset_file.read_text()
    for old, new in ((f'name = "{testbed.preset_file.stem}"', f'name = "{name}"'),
                     (f"port = {testbed.ssh_port}", f"port = {proxy.port}"),
                     (f'known_hosts = "{testbed.known_hosts}"', f'known_hosts = "{known}"')):
        assert old in text, old
        text = text.replace(old, new)
    preset_file = user_presets_dir() / f"{name}.toml"
    preset_file.write_text(text)
    try:
        yield proxy, name
    finally:
        preset_file.unlink(missing_ok=True)
        proxy.stop_thread()


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    scene = make_sample(tmp_path_factory.mktemp("faults-scene"))
    subprocess.run([sys.executable, "-c", BIG_FRAMES, str(scene)], check=True, capture_output=True, timeout=120)
    return scene


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The real command line, in this process (so it goes through the proxy running here)."""
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _submit(capsys: pytest.CaptureFixture[str], scene: Path, preset: str, frames: str) -> tuple[int, str, str]:
    return _cli(capsys, "submit", str(scene), "--preset", preset, "--frames", frames, "--chunk", "4", "--json")


def _wait(job: str) -> monitor.JobStatus:
    async def go() -> monitor.JobStatus:
        try:
            return await monitor.wait(job, timeout_s=300, poll_max_s=2)
        finally:
            await pool.close_all()

    return asyncio.run(go())


def _download(job: str, dest: Path) -> str:
    """transfer.download in this process: "" when it completed, else the error it raised."""
    async def go() -> None:
        try:
            await transfer.download(job, dest)
        finally:
            await pool.close_all()

    try:
        asyncio.run(go())
    except BraasError as error:
        return str(error)
    return ""


def _variant(scene: Path, where: Path) -> Path:
    """The scene with texture bytes of its own (PNG readers ignore what follows the end chunk), so its
    packed .blend is new to the store and has to be uploaded."""
    shutil.copytree(scene.parent, where)
    with (where / "textures" / "checker.png").open("ab") as texture:
        texture.write(secrets.token_bytes(64))
    return where / scene.name


def _store_files(store: Path) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_size for p in store.glob("*/*") if p.is_file()}


def _check_store(store: Path, before: dict[str, int]) -> int:
    """Every store object under a digest name holds exactly those bytes; a partial upload is left only
    under a hidden temp name (which put() resumes from). Returns how many of those there are."""
    hidden = 0
    for rel, size in _store_files(store).items():
        name = Path(rel).name
        if before.get(rel) == size:
            continue  # there before this run, checked then (or not ours)
        if SHA256_HEX.match(name):
            assert sha256(store / rel) == name, f"store object {rel} does not hold its digest's bytes"
        elif name.startswith(".") and name.endswith(PART_SUFFIX):
            hidden += 1
        else:
            raise AssertionError(f"{rel}: a partial upload left in the store under a visible name")
    return hidden


def _frames_on_cluster(testbed: tb.Testbed, job: str) -> dict[str, str]:
    out = Path(testbed.workdir) / f"braas-hpc-{testbed.user}" / "jobs" / job / "out"
    return {p.name: sha256(p) for p in out.iterdir() if FRAME_FILE.match(p.name)}


def _check_local(dest: Path, truth: dict[str, str]) -> int:
    """Every file under a frame's name equals the cluster's frame; anything else is a hidden temp file.
    Returns the number of temp files (frames cut in the middle, kept to resume)."""
    temps = 0
    for path in dest.iterdir() if dest.is_dir() else ():
        if FRAME_FILE.match(path.name):
            assert sha256(path) == truth[path.name], f"{path.name} is not the cluster's frame"
        else:
            assert path.name.startswith(".") and path.name.endswith(PART_SUFFIX), f"unexpected {path}"
            temps += 1
    return temps


def _complete(dest: Path, truth: dict[str, str]) -> None:
    assert sorted(p.name for p in dest.iterdir()) == sorted(truth), "frames missing, or temp files left"
    _check_local(dest, truth)
    for name in truth:
        check_frame(dest / name)


def test_upload_cut_leaves_no_half_object_and_a_rerun_completes(testbed: tb.Testbed, proxied: tuple[CutProxy, str],
                                                                 big_scene: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    proxy, preset = proxied
    store = Path(testbed.workdir) / f"braas-hpc-{testbed.user}" / "store"
    jobs, survived, reruns, temps, drops = [], 0, 0, 0, 0
    for run, cut in enumerate(UPLOAD_CUTS):
        scene = _variant(big_scene, tmp_path / f"project-{run}")
        before, dropped = _store_files(store), proxy.drops
        proxy.drop_after_bytes = cut
        try:
            code, out, err = _submit(capsys, scene, preset, "1")
        finally:
            proxy.drop_after_bytes = None
        drops += proxy.drops - dropped
        assert proxy.drops > dropped, f"cut at {cut} bytes: no connection was cut"
        temps += _check_store(store, before)
        if code == 0:
            survived += 1  # the resume got the file through within the same submit
        else:
            assert code == 1 and "dropped" in err, err
            reruns += 1
            code, out, err = _submit(capsys, scene, preset, "1")
            assert code == 0, err
            again = json.loads(out)  # sent again, or already whole in the store when the cut came later
            assert again["uploaded_files"] + again["skipped_files"] == 1
            _check_store(store, before)
        jobs.append(json.loads(out)["job"])
    for job in jobs:
        assert _wait(job).state == "COMPLETED"
        dest = tmp_path / job
        assert _download(job, dest) == ""
        _complete(dest, _frames_on_cluster(testbed, job))
    print(f"\nFIGURES upload-cut: runs={len(UPLOAD_CUTS)} connections_cut={drops} resumed_in_run={survived} "
          f"failed_then_rerun={reruns} hidden_temps_left={temps} jobs_completed={len(jobs)} frames_lost=0")


def test_download_cut_never_passes_a_half_frame(testbed: tb.Testbed, proxied: tuple[CutProxy, str], big_scene: Path,
                                                tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proxy, preset = proxied
    code, out, err = _submit(capsys, big_scene, preset, "1-4")
    assert code == 0, err
    job = json.loads(out)["job"]
    assert _wait(job).state == "COMPLETED"
    truth = _frames_on_cluster(testbed, job)
    out = Path(testbed.workdir) / f"braas-hpc-{testbed.user}" / "jobs" / job / "out"
    assert len(truth) == 4 and min(p.stat().st_size for p in out.glob("frame_*")) > 100_000
    failed, cut_frames, drops = 0, 0, 0
    for run, cut in enumerate(DOWNLOAD_CUTS):
        dest = tmp_path / f"frames-{run}"
        dropped = proxy.drops
        proxy.drop_down_after = cut
        try:
            error = _download(job, dest)
        finally:
            proxy.drop_down_after = None
        drops += proxy.drops - dropped
        assert proxy.drops > dropped, f"cut at {cut} bytes: no connection was cut"
        cut_frames += _check_local(dest, truth)
        if error:
            failed += 1
            assert "dropped" in error, error
        assert _download(job, dest) == ""
        _complete(dest, truth)
    print(f"\nFIGURES download-cut: runs={len(DOWNLOAD_CUTS)} connections_cut={drops} failed_then_rerun={failed} "
          f"half_frames_kept_as_temp={cut_frames} frames_checked={4 * len(DOWNLOAD_CUTS)} frames_lost=0")


@contextlib.contextmanager
def _tiny_disk(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "braas-disk-full", str(where)],
                   check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, capture_output=True)
        where.rmdir()


def _fill(disk: Path, leave: int) -> Path:
    """A filler file that leaves about `leave` bytes free."""
    info = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, info.f_bavail * info.f_frsize - leave))
    return filler


def test_disk_full_during_download_is_clear_and_leaves_no_frame(testbed: tb.Testbed, big_scene: Path,
                                                                 tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _submit(capsys, big_scene, "testbed", "1-4")
    assert code == 0, err
    job = json.loads(out)["job"]
    assert _wait(job).state == "COMPLETED"
    truth = _frames_on_cluster(testbed, job)
    out = Path(testbed.workdir) / f"braas-hpc-{testbed.user}" / "jobs" / job / "out"
    frame = max(p.stat().st_size for p in out.iterdir())
    with _tiny_disk(tmp_path / "disk", "1m") as disk:
        for room in DISK_ROOM_FRAMES:
            dest = disk / f"frames-{room}"
            filler = _fill(disk, room * frame + frame // 2)
            code, out, err = _cli(capsys, "download", job, "--dest", str(dest))
            assert code == 1 and "no space left" in err.lower(), err
            assert "Traceback" not in err, err
            _check_local(dest, truth)
            assert len(list(dest.iterdir())) == room, "a partial frame was left on the full disk"
            filler.unlink()
            code, out, err = _cli(capsys, "download", job, "--dest", str(dest))
            assert code == 0, err
            _complete(dest, truth)
            shutil.rmtree(dest)
    print(f"\nFIGURES disk-full: runs={len(DISK_ROOM_FRAMES)} faults={len(DISK_ROOM_FRAMES)} "
          f"frames_checked={4 * len(DISK_ROOM_FRAMES)} frames_lost=0")
