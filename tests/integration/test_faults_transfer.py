"""Transfers under faults on the real test cluster: the connection cut during a submit's upload and
during a download (a TCP proxy in front of the test cluster's sshd), on each SSH back end; the local
disk full during a download (a tiny tmpfs mounted for the test); a frame that changes on the cluster
between its hash and its copy.

After every fault: nothing half-written is taken for a store object or a frame, and a re-run completes
with every frame valid and equal to the cluster's copy (SHA-256). The counts go to docs/reliability.md;
each test prints its own line (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import posixpath
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from braas_hpc import cli
from braas_hpc.core import monitor, registry, transfer, watch
from braas_hpc.core.context import job_context
from braas_hpc.core.errors import BraasError, ConnectionLost
from braas_hpc.core.jobs import FRAME_FILE, SHA256_HEX, JobPaths
from braas_hpc.core.paths import user_presets_dir
from braas_hpc.core.presets import load_preset
from braas_hpc.core.transport import Transport, make_transport, pool, target_for
from braas_hpc.core.transport.base import PART_SUFFIX
from tests.client_side import cluster_path
from tests.helpers import check_frame, make_sample, sha256
from tests.testbed import testbed as tb
from tests.testbed.tcpproxy import TcpProxy

pytestmark = pytest.mark.testbed

BACKENDS = ("asyncssh", "paramiko", "openssh")
# Client->server bytes a proxied connection may carry before it is cut. The packed sample is ~430 kB
# and the commands before the upload take a few kB, so every cut lands inside the store upload; the
# small ones also cut every reconnection before the file is through (the submit fails), the large ones
# let the resume finish it (the submit succeeds). Every back end runs the whole sweep.
UPLOAD_CUTS = dict.fromkeys(BACKENDS, (40_000, 120_000, 250_000, 330_000, 400_000))
# Server->client bytes per connection during a download of four ~170 kB frames, the same sweep for each.
DOWNLOAD_CUTS = dict.fromkeys(BACKENDS, (30_000, 90_000, 200_000, 330_000, 520_000))
# Server->client bytes per connection while a 170 kB file is fetched: the last reconnection of each
# is cut inside the file's last 64 kB.
LAST_BYTES_CUTS = (45_000, 55_000, 65_000)
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


@pytest.fixture(autouse=True)
def direct_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """What these tests cut is the command's own SSH connection: never a connection keeper's in between
    (the suite's default too, said here because these tests depend on it)."""
    monkeypatch.setenv("BRAAS_HPC_KEEPER", "off")


class _Swallow:
    """A stream reader that passes the first `room` bytes and then reads on but passes nothing: the
    client's sends all complete while the server gets none of them (a link that went dead silently)."""

    def __init__(self, reader: asyncio.StreamReader, room: int) -> None:
        self._reader = reader
        self._room = room

    async def read(self, size: int) -> bytes:
        while data := await self._reader.read(size):
            if self._room > 0:
                data, self._room = data[:self._room], self._room - len(data)
                return data
        return data  # end of file


class CutProxy(TcpProxy):
    """The testbed's proxy, which also cuts a connection after `drop_down_after` server->client bytes,
    and stops passing client->server bytes after `hold_up_after` (both read when a connection is
    accepted, like `drop_after_bytes`)."""

    drop_down_after: int | None = None
    hold_up_after: int | None = None

    async def _pump(self, link, reader, writer, limit, *, upstream):  # noqa: ANN001, ANN202 - as in the base
        if upstream and self.hold_up_after is not None:
            reader = _Swallow(reader, self.hold_up_after)
        await super()._pump(link, reader, writer, limit if upstream else self.drop_down_after, upstream=upstream)

    def cut_now(self) -> int:
        """Cut every open connection; returns once their sockets are closed, so each peer has its reset."""
        cut = self.drop_all()
        assert self._loop is not None
        # The sockets close in callbacks the cut queued on the proxy's loop: one more turn runs them.
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result(10)
        return cut


def _faults_workdir(testbed: tb.Testbed) -> str:
    """The proxied presets' working directory: a store of their own, which the store checks below read
    (tests/cluster_session.py runs other tests' uploads beside these)."""
    return f"{testbed.workdir}/tbfaults"


@pytest.fixture(scope="module", params=BACKENDS)
def proxied(testbed: tb.Testbed, tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[tuple[CutProxy, str, str]]:
    """A proxy in front of the cluster's sshd and a preset that connects through it with one back end:
    (proxy, preset name, back end)."""
    backend: str = request.param
    proxy = CutProxy("127.0.0.1", testbed.ssh_port)
    proxy.start_in_thread()
    name = f"tb-faults-{backend}-{secrets.token_hex(3)}"
    known = tmp_path_factory.mktemp("faults-hosts") / "known_hosts"
    pin = f"[127.0.0.1]:{testbed.ssh_port} "
    lines = [line.replace(pin, f"[127.0.0.1]:{proxy.port} ", 1)
             for line in testbed.known_hosts.read_text().splitlines() if line.startswith(pin)]
    assert lines, f"no pin for {pin} in {testbed.known_hosts}"
    known.write_text("\n".join(lines) + "\n")
    text = testbed.preset_file.read_text()
    for old, new in ((f'name = "{testbed.preset_file.stem}"', f'name = "{name}"'),
                     (f"port = {testbed.ssh_port}", f"port = {proxy.port}"),
                     (f'known_hosts = "{testbed.known_hosts}"', f'known_hosts = "{known}"'),
                     ('ssh_backend = "asyncssh"', f'ssh_backend = "{backend}"'),
                     (f'workdir = "{testbed.workdir}"', f'workdir = "{_faults_workdir(testbed)}"')):
        assert old in text, old
        text = text.replace(old, new)
    made = subprocess.run(tb.ssh_command(tb.Layout.from_env(), f"mkdir -p {_faults_workdir(testbed)}"),
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    preset_file = user_presets_dir() / f"{name}.toml"
    preset_file.write_text(text)
    try:
        yield proxy, name, backend
    finally:
        preset_file.unlink(missing_ok=True)
        proxy.stop_thread()


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    scene = make_sample(tmp_path_factory.mktemp("faults-scene"), fresh=True)  # bytes no store has yet
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
            return await watch.wait(job, timeout_s=300, poll_max_s=2)
        finally:
            await pool.close_all()

    return asyncio.run(go())


def _download(job: str, dest: Path) -> str:
    """transfer.download in this process: "" when it completed, else the error it raised."""
    async def go() -> None:
        try:
            await transfer.download(job_context(job), dest)
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


def _out_dir(job: str) -> Path:
    """The job's out/ on the cluster, as this side sees it (under its preset's working directory)."""
    record = registry.get_job(job)
    return cluster_path(JobPaths(record.remote_root, record.name).out_dir)


def _frames_on_cluster(testbed: tb.Testbed, job: str) -> dict[str, str]:
    return {p.name: sha256(p) for p in _out_dir(job).iterdir() if FRAME_FILE.match(p.name)}


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


def test_upload_cut_leaves_no_half_object_and_a_rerun_completes(testbed: tb.Testbed,
                                                                 proxied: tuple[CutProxy, str, str],
                                                                 big_scene: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    proxy, preset, backend = proxied
    store = cluster_path(_faults_workdir(testbed)) / f"braas-hpc-{testbed.user}" / "store"
    jobs, survived, reruns, temps, drops = [], 0, 0, 0, 0
    for run, cut in enumerate(UPLOAD_CUTS[backend]):
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
            assert code == 3 and "dropped" in err, err  # the cluster could not be reached (README)
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
    print(f"\nFIGURES upload-cut {backend}: runs={len(jobs)} connections_cut={drops} resumed_in_run={survived} "
          f"failed_then_rerun={reruns} hidden_temps_left={temps} jobs_completed={len(jobs)} frames_lost=0")


def test_download_cut_never_passes_a_half_frame(testbed: tb.Testbed, proxied: tuple[CutProxy, str, str],
                                                big_scene: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    proxy, preset, backend = proxied
    code, out, err = _submit(capsys, big_scene, preset, "1-4")
    assert code == 0, err
    job = json.loads(out)["job"]
    assert _wait(job).state == "COMPLETED"
    truth = _frames_on_cluster(testbed, job)
    out = _out_dir(job)
    assert len(truth) == 4 and min(p.stat().st_size for p in out.glob("frame_*")) > 100_000
    failed, cut_frames, drops = 0, 0, 0
    for run, cut in enumerate(DOWNLOAD_CUTS[backend]):
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
    runs = len(DOWNLOAD_CUTS[backend])
    print(f"\nFIGURES download-cut {backend}: runs={runs} connections_cut={drops} failed_then_rerun={failed} "
          f"half_frames_kept_as_temp={cut_frames} frames_checked={4 * runs} frames_lost=0")


def _through(preset: str, backend: str) -> Transport:
    """A transport of that back end with that preset's target ("testbed": straight to the cluster)."""
    return make_transport(backend, target_for(load_preset(preset)))


def _part(path: str) -> str:
    """The hidden name put() and get() keep an unfinished transfer under (and resume from)."""
    return posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}{PART_SUFFIX}")


async def _gone(transport: Transport, remote: str) -> bool:
    return (await transport.run(["test", "!", "-e", remote], check=False)).exit_status == 0


def test_upload_cut_after_its_last_byte_left_resumes_with_the_right_bytes(testbed: tb.Testbed,
                                                                          proxied: tuple[CutProxy, str, str],
                                                                          tmp_path: Path) -> None:
    """Staged, not swept: an upload resumes a part left by an earlier cut; its connection dies silently
    (the proxy reads every byte the client sends but passes none after the first 100 kB) and is cut the
    moment the client has handed over its last byte, before the server confirmed it. put() must take
    that as a dropped connection, not a finished upload: it resumes on a new connection and the file
    on the cluster is the local one."""
    proxy, preset, backend = proxied
    local = tmp_path / "upload.bin"
    local.write_bytes(secrets.token_bytes(430_000))
    prefix = tmp_path / "prefix.bin"
    prefix.write_bytes(local.read_bytes()[:65_536])
    remote = f"{testbed.workdir}/faults-put-{backend}-{secrets.token_hex(4)}.bin"
    cuts: list[int] = []

    def progress(done: int, total: int) -> None:
        if done == total and not cuts:
            proxy.hold_up_after = None  # for the reconnection
            cuts.append(proxy.cut_now())

    async def go() -> tuple[str, bool]:
        async with _through("testbed", backend) as transport:
            await transport.send_exact(prefix, _part(remote))  # what an earlier cut left
        proxy.hold_up_after = 100_000
        try:
            async with _through(preset, backend) as transport:
                await transport.put(local, remote, progress)
                digest, part_gone = await transport.sha256(remote), await _gone(transport, _part(remote))
                await transport.run(["rm", "-f", "--", remote])
                return digest, part_gone
        finally:
            proxy.hold_up_after = None

    digest, part_gone = asyncio.run(go())
    assert cuts and cuts[0] >= 1, "no connection was cut after the last byte left"
    assert digest == sha256(local), "the resumed upload does not hold the local file's bytes"
    assert part_gone, "the hidden part file was left behind"
    print(f"\nFIGURES upload-staged-cut {backend}: runs=1 connections_cut=1 resumed=1 corrupt=0")


def test_download_cuts_near_the_end_of_a_file_resume_with_the_right_bytes(testbed: tb.Testbed,
                                                                           proxied: tuple[CutProxy, str, str],
                                                                           tmp_path: Path) -> None:
    """A 170 kB file fetched with get() while every connection is cut after 45-65 kB from the server: the
    last connection is cut in the file's last bytes, after the remote command has ended, and the
    server may report its exit status ahead of those bytes. Each get() must end with the cluster's
    bytes or with a dropped connection (which a re-run resumes), never as finished but short."""
    proxy, preset, backend = proxied
    remote = f"{testbed.workdir}/faults-get-{backend}-{secrets.token_hex(4)}.bin"
    outcomes: dict[str, int] = {}

    async def go() -> None:
        async with _through("testbed", backend) as cluster:
            await cluster.run(["sh", "-c", 'head -c 170000 /dev/urandom > "$1"', "sh", remote])
            digest = await cluster.sha256(remote)
            for cut in LAST_BYTES_CUTS:
                local = tmp_path / f"cut-{cut}.bin"
                proxy.drop_down_after = cut
                try:
                    async with _through(preset, backend) as transport:
                        await transport.get(remote, local)
                    outcomes["completed"] = outcomes.get("completed", 0) + 1
                except ConnectionLost:
                    outcomes["dropped"] = outcomes.get("dropped", 0) + 1
                    assert not local.exists(), "a dropped download left a file under its name"
                finally:
                    proxy.drop_down_after = None
                async with _through(preset, backend) as transport:
                    await transport.get(remote, local)  # a re-run resumes what the cut left
                assert sha256(local) == digest, f"cut at {cut} bytes: the download does not hold the cluster's bytes"
            await cluster.run(["rm", "-f", "--", remote])

    dropped = proxy.drops
    asyncio.run(go())
    assert proxy.drops - dropped >= len(LAST_BYTES_CUTS), "not every download was cut"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"cut-{c}.bin" for c in LAST_BYTES_CUTS)
    print(f"\nFIGURES download-last-bytes-cut {backend}: runs={len(LAST_BYTES_CUTS)} "
          f"connections_cut={proxy.drops - dropped} {outcomes} corrupt=0")


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
    out = _out_dir(job)
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


def test_a_frame_changed_on_the_cluster_after_its_hash_fails_the_download_and_is_removed(
        testbed: tb.Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A download hashes the cluster's frames in one command, then copies them one by one. A frame
    rewritten on the cluster in between (here: another frame's bytes put under its name, as a re-render
    or a stray copy would) arrives whole and of the right length but not with the bytes that were
    hashed: only the check after the copy can tell. The frame must not stay under its name, nothing
    half-written may stay, the download fails saying which frame; once the cluster's copy is back the
    same command fetches it."""
    code, out, err = _cli(capsys, "submit", str(make_sample(tmp_path / "project")), "--preset", "testbed",
                          "--frames", "1-2", "--json")
    assert code == 0, err
    job = json.loads(out)["job"]
    assert _wait(job).state == "COMPLETED"
    truth = _frames_on_cluster(testbed, job)
    names = sorted(truth)
    assert len(names) == 2
    victim = names[1]
    out = f"{testbed.workdir}/braas-hpc-{testbed.user}/jobs/{job}/out"
    target, kept = f"{out}/{victim}", f"{out}/.{victim}.kept"
    real_listing = transfer._remote_listing
    changed: list[str] = []

    async def hash_then_change(transport: Transport, out_dir: str, verified: dict[str, int]) -> transfer.RemoteFrames:
        listing = await real_listing(transport, out_dir, verified)
        if victim in listing.digests and not changed:  # the fault, injected on the cluster between hash and copy
            await transport.run(["sh", "-c", 'cp -p -- "$1" "$2" && cp -- "$3" "$1"', "sh", target, kept,
                                 f"{out}/{names[0]}"])
            changed.append(target)
        return listing

    monkeypatch.setattr(transfer, "_remote_listing", hash_then_change)
    dest = tmp_path / "frames"
    code, _, err = _cli(capsys, "download", job, "--dest", str(dest))
    assert changed == [target], "the frame was not changed between its hash and its copy"
    assert code == 1 and f"{victim} does not match the cluster's copy (SHA-256); removed it" in err, err
    assert "Traceback" not in err, err
    assert sorted(p.name for p in dest.iterdir()) == [names[0]], "the changed frame or a temp file was left"
    assert sha256(dest / names[0]) == truth[names[0]]

    monkeypatch.setattr(transfer, "_remote_listing", real_listing)

    async def put_back() -> None:
        async with _through("testbed", "asyncssh") as cluster:
            await cluster.run(["mv", "-f", "--", kept, target])

    asyncio.run(put_back())
    assert _frames_on_cluster(testbed, job) == truth
    code, _, err = _cli(capsys, "download", job, "--dest", str(dest))
    assert code == 0, err
    _complete(dest, truth)
    print("\nFIGURES frame-changed-after-hash: runs=1 faults=1 frames_removed=1 frames_checked=2 frames_lost=0")
