"""Faults on the cluster side while a job runs and a client watches it: the login node's sshd restarted
(every open connection dropped) during `wait`, and slurmd killed during a render (the task rendering on
without it). After each, `wait` ends with every frame, each checked as a valid frame of the scene.
Counts go to docs/reliability.md."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from braas_hpc.core.errors import ConnectionLost
from braas_hpc.core.presets import load_preset
from braas_hpc.core.transport import transport_for
from tests.client_side import on_cluster_host
from tests.cluster_session import TESTBED_CLI
from tests.conftest import REPO, run_cli
from tests.helpers import check_frame, eventually
from tests.testbed import nodens
from tests.testbed import testbed as tb

RUNS = 2
RESTART_FRAMES = 20  # four tasks of five: the job outlasts both restarts of a run (2 x (1 s + DOWN_S))
DOWN_S = 4.0  # two of the watcher's 2 s polls (the suite's BRAAS_HPC_POLL_MAX): at least one meets the closed port


@pytest.fixture(autouse=True)
def direct_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """What these tests cut is the command's own SSH connection: never a connection keeper's in between
    (the suite's default too, said here because these tests depend on it)."""
    monkeypatch.setenv("BRAAS_HPC_KEEPER", "off")


def _submit(scene: Path, frames: str, chunk: int = 5) -> dict:
    done = run_cli("submit", str(scene), "--preset", "testbed", "--frames", frames, "--chunk", str(chunk), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _watch(job: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "braas_hpc.cli", "wait", job, "--timeout", "600", "--json"],
                            cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


OWN_PORT = 2225  # this test's own login node: the suite's other SSH tests go on against the main one


class LoginNode:
    """A second sshd of the test cluster (its config, its host key, another port), so restarting it
    drops only this test's connections: an admin restarting the login node's sshd, seen by one user."""

    def __init__(self, layout: tb.Layout, directory: Path) -> None:
        self.argv = on_cluster_host(["/usr/sbin/sshd", "-D", "-f", str(layout.sshd / "sshd_config"), "-p",
                                     str(OWN_PORT), "-o", f"PidFile={directory / 'sshd.pid'}", "-E",
                                     str(directory / "sshd.log")])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        assert eventually(lambda: tb._ssh_banner(OWN_PORT), bool, "the login node's sshd answering", timeout=30)

    def stop(self) -> None:
        """The listener and every connection it forked (the listener's descendants), killed at once."""
        if self.process is None:
            return
        doomed = _descendants(self.process.pid)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(30)
        self.process = None


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc: parent of each)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


@pytest.fixture
def login_node(testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoginNode]:  # noqa: ANN001
    """The test cluster's preset through this test's own sshd (its host key pinned for that port too)."""
    layout = tb.Layout.from_env()
    config = tmp_path / "config"
    shutil.copytree(os.environ["BRAAS_HPC_CONFIG_DIR"], config)
    preset = config / "presets" / "testbed.toml"
    text = preset.read_text()
    known = Path(re.search(r'^known_hosts = "(.+)"$', text, re.MULTILINE).group(1))
    port_line = f"port = {layout.ssh_port}"
    assert port_line in text
    pinned = tmp_path / "known_hosts"
    entries = known.read_text().splitlines()
    ours = [e.replace(f"[127.0.0.1]:{layout.ssh_port}", f"[127.0.0.1]:{OWN_PORT}") for e in entries
            if e.startswith(f"[127.0.0.1]:{layout.ssh_port} ")]
    assert ours, f"no pinned key of 127.0.0.1:{layout.ssh_port} in {known}"
    pinned.write_text("\n".join([*entries, *ours]) + "\n")
    preset.write_text(text.replace(port_line, f"port = {OWN_PORT}").replace(str(known), str(pinned)))
    monkeypatch.setenv("BRAAS_HPC_CONFIG_DIR", str(config))
    node = LoginNode(layout, tmp_path)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def _restart_sshd(node: LoginNode) -> None:
    node.stop()
    time.sleep(DOWN_S)  # longer than the watcher's first poll intervals: a poll meets the closed port
    node.start()


def _frames_checked(job: dict, tmp_path: Path) -> int:
    """Downloads the job's frames and checks each (a valid frame of the scene); returns how many passed."""
    dest = tmp_path / job["job"]
    got = run_cli("download", job["job"], "--dest", str(dest), "--json")
    assert got.returncode == 0, got.stderr
    frames = sorted(dest.glob("frame_*.png"))
    for frame in frames:
        check_frame(frame)
    return len(frames)


def test_sshd_restarted_while_a_client_waits(login_node: LoginNode, sample_scene: Path, tmp_path: Path) -> None:
    restarts = outages = checked = 0
    for _ in range(RUNS):
        job = _submit(sample_scene, f"1-{RESTART_FRAMES}")
        watcher = _watch(job["job"])
        for _ in range(2):
            time.sleep(1)
            _restart_sshd(login_node)
            restarts += 1
        out, err = watcher.communicate(timeout=700)
        assert watcher.returncode == 0, err
        outages += err.count("trying again")  # polls that met the dropped connection or the closed port
        final = json.loads(out)
        assert final["state"] == "COMPLETED" and final["frames_done"] == RESTART_FRAMES
        checked += _frames_checked(job, tmp_path)
    assert outages >= RUNS, "the restarts never reached the watching client: the test injected nothing"
    lost = RUNS * RESTART_FRAMES - checked
    assert lost == 0
    print(f"FIGURES sshd-restart runs={RUNS} restarts={restarts} polls_hit={outages} frames_checked={checked} "
          f"lost={lost}")


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed daemon stays one until its parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _render_pids(job_dir: str) -> list[int]:
    """Blender processes rendering a task of this job (their command line names its directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except OSError:
            continue
        if job_dir.encode() in cmdline and any(part.endswith(b"render_task.py") for part in cmdline):
            found.append(int(proc.name))
    return found


FRAMES = 10  # one task; the first frame marks it running, the rest are rendered across the kill


def test_slurmd_killed_during_a_render(testbed, remote, sample_scene: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """slurmd SIGKILLed while a task renders: the daemon is really gone (its port closed) while the task, whose
    slurmstepd outlives it, goes on writing frames; the restarted daemon is a new process; `wait` ends with
    every frame from the first round (no recovery was needed), each downloaded and checked."""
    layout = tb.Layout.from_env()
    node = nodens.NODES[0]
    job = _submit(sample_scene, f"1-{FRAMES}", chunk=FRAMES)
    out_dir = f"{job['job_dir']}/out"

    def frames_now() -> int:
        return int(remote(f"ls {out_dir} | grep -c '^frame_'").stdout.strip() or 0)

    eventually(frames_now, bool, "the task's first frame", timeout=300, every=0.1)
    renderers = eventually(lambda: _render_pids(job["job_dir"]), bool, "the task's Blender", timeout=30,
                           every=0.1)
    old = int(layout.pid_file("slurmd").read_text().split()[0])
    os.kill(old, signal.SIGKILL)  # mid-render: the node's daemon is gone
    eventually(lambda: not _alive(old) and not node.port_taken(tb.SLURMD_PORT), bool, "slurmd to die",
               timeout=30, every=0.1)
    at_kill = frames_now()
    assert at_kill < FRAMES and all(_alive(pid) for pid in renderers), "the task ended before the kill"
    # With the daemon down, the task renders on: a frame written now was written without slurmd.
    eventually(lambda: frames_now() > at_kill, bool, "a frame rendered while slurmd is down", every=0.1)
    assert not node.port_taken(tb.SLURMD_PORT) and not _alive(old)
    rendered_while_down = frames_now() - at_kill
    # The node's daemon back, as an admin would bring it (on the cluster's side: tests/client_side.py).
    back = subprocess.run(on_cluster_host([sys.executable, str(TESTBED_CLI), "up"]), capture_output=True, text=True,
                          timeout=600)
    assert back.returncode == 0, back.stdout + back.stderr
    new = int(layout.pid_file("slurmd").read_text().split()[0])
    assert new != old and _alive(new) and node.port_taken(tb.SLURMD_PORT)

    waited = run_cli("wait", job["job"], "--timeout", "600", "--json", timeout=700)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    final = json.loads(waited.stdout)
    assert final["frames_done"] == FRAMES
    # The task that rendered across the kill finished it: one scheduler submission, no recovery round.
    assert final["scheduler_ids"] == job["scheduler_ids"] and final["tasks"] == {"COMPLETED": 1}, final
    checked = _frames_checked(job, tmp_path)
    lost = FRAMES - checked
    assert lost == 0
    print(f"FIGURES slurmd-kill frames={FRAMES} at_kill={at_kill} rendered_while_down={rendered_while_down} "
          f"slurmd_pid={old}->{new} frames_checked={checked} lost={lost}")


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _step_of(pid: int) -> int:
    """The slurmstepd a task's process runs under (0: none found)."""
    while pid > 1:
        pid = _parent(pid)
        try:
            if (Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"slurmstepd")):
                return pid
        except OSError:
            return 0
    return 0


def test_a_node_that_crashes_mid_render_is_recovered_by_the_cluster_alone(  # noqa: ANN001
        testbed, remote, sample_scene: Path, tmp_path: Path) -> None:
    """A node crash with nobody watching: slurmd, the task's slurmstepd and its Blender SIGKILLed at once
    (the node's processes gone, as in a power cut); Slurm marks the node down and ends the task; the node's
    slurmd starts again, as after a reboot. No braas-hpc command runs until the end: the round's finish
    step submits the frames the task lost as round 1, and every frame is there, each rendered once."""
    layout = tb.Layout.from_env()
    node = nodens.NODES[0]
    job = _submit(sample_scene, f"1-{FRAMES}", chunk=FRAMES)
    out_dir = f"{job['job_dir']}/out"

    def frames_now() -> set[str]:
        return set(remote(f"find {out_dir} -name 'frame_*' -size +0 -printf '%f\\n'").stdout.split())

    eventually(frames_now, bool, "the task's first frame", timeout=300, every=0.1)
    renderers = eventually(lambda: _render_pids(job["job_dir"]), bool, "the task's Blender", timeout=30, every=0.1)
    steps = {_step_of(pid) for pid in renderers} - {0}
    assert steps, "no slurmstepd above the task's Blender"
    daemon = int(layout.pid_file("slurmd").read_text().split()[0])
    for pid in [daemon, *steps, *renderers]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    eventually(lambda: not _alive(daemon) and not node.port_taken(tb.SLURMD_PORT), bool, "slurmd to die",
               timeout=30, every=0.1)
    at_crash = len(frames_now())
    assert at_crash < FRAMES, "the task ended before the crash"
    # Slurm finds the node silent past SlurmdTimeout (30 s on the test cluster), marks it DOWN and ends its
    # job (NODE_FAIL); only then does the node come back, as after a reboot.
    eventually(lambda: remote(f"sinfo -h -n {node.slurm_name} -o %T").stdout.strip(),
               lambda state: state.startswith("down"), "Slurm to mark the node down", timeout=120, every=1)
    back = subprocess.run(on_cluster_host([sys.executable, str(TESTBED_CLI), "up"]), capture_output=True, text=True,
                          timeout=600)
    assert back.returncode == 0, back.stdout + back.stderr

    wanted = {f"frame_{n:06d}.png" for n in range(1, FRAMES + 1)}
    eventually(frames_now, lambda got: got >= wanted, "every frame, with no client", timeout=600, every=1)
    log = remote(f"cat {job['job_dir']}/log/finish.log").stdout
    assert "round 1 submitted for frames" in log, log
    markers = json.loads(remote(f"cd {job['job_dir']}/status && python3 -c 'import glob, json; print(json.dumps("
                                "[json.load(open(f)) for f in glob.glob(\"*.json\")]))'").stdout)
    rendered = [frame for marker in markers for frame in marker.get("rendered", [])]
    assert sorted(rendered) == sorted(set(rendered)), f"a frame rendered twice: {markers}"
    checked = _frames_checked(job, tmp_path)  # the client, back in the morning
    assert checked == FRAMES
    print(f"FIGURES node-crash-no-client frames={FRAMES} at_crash={at_crash} frames_checked={checked} lost=0")


def test_a_channel_refused_as_the_connection_drops_is_a_lost_connection(testbed) -> None:  # noqa: ANN001
    """Found by the sshd-restart test: sshd killed just as `wait` polled. asyncssh had seen the socket
    drop (its protocol's connection_lost, which the event loop calls) but finishes the close in a callback
    it schedules, so the connection still read as open and the command's channel was refused ("SSH
    connection closed"): `wait` died of a traceback instead of waiting the outage out. Here the drop is
    delivered at exactly that point, every time."""
    preset = load_preset("testbed")

    async def poll_as_the_socket_drops() -> BaseException:
        transport = transport_for(preset, "asyncssh")
        await transport.run(["true"])
        transport._conns[-1].connection_lost(ConnectionResetError("reset by the test"))  # noqa: SLF001
        try:
            await transport.run(["true"])
        except BaseException as exc:  # noqa: BLE001 - what it raises is the subject
            return exc
        finally:
            await transport.close()
        raise AssertionError("a command ran on a connection that had dropped")

    assert isinstance(asyncio.run(poll_as_the_socket_drops()), ConnectionLost)
