"""The interactive core without a cluster: the holding job script, the connection file's checks, the
node script run for real on this machine (exec, connection file, exact stop), and the tunnel watchdog
over the local transport."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from braas_hpc.core.errors import UsageError
from braas_hpc.core.presets import load_preset
from braas_hpc.core.transport.local import LocalTransport
from braas_hpc_interactive.core import launch, node_script
from braas_hpc_interactive.core.records import Connection, SessionPaths, check_session_name, new_session_name
from braas_hpc_interactive.core.session import holder_script, holder_spec, start_server
from braas_hpc_interactive.core.tunnel import Tunnel

PATHS = SessionPaths("/scratch/me/braas-hpc", "i-20260101-120000-ab12")


def test_holder_script_slurm_gpu() -> None:
    preset = load_preset("karolina")
    script = holder_script(preset, holder_spec(preset, PATHS.name, 90, gpu=True), PATHS)
    assert "#SBATCH --time=01:30:00" in script and "#SBATCH --nodes=1" in script
    assert "--array" not in script
    assert f"#SBATCH --output={PATHS.dir}/slurm-%j.out" in script
    assert any(line.startswith("#SBATCH --partition=qgpu") for line in script.splitlines())
    assert script.rstrip().endswith(f"exec bash {PATHS.node_script} hold {PATHS.dir} 5400")


def test_holder_script_pbs_is_one_plain_job() -> None:
    preset = load_preset("polaris")
    script = holder_script(preset, holder_spec(preset, PATHS.name, 30, gpu=True), PATHS)
    assert "#PBS" in script and " -J " not in script and "walltime=00:30:00" in script
    assert script.rstrip().endswith(f"exec bash {PATHS.node_script} hold {PATHS.dir} 1800")


def test_holder_spec_refuses_what_the_site_refuses() -> None:
    with pytest.raises(UsageError, match="above the limit"):
        holder_spec(load_preset("karolina"), PATHS.name, 100_000, gpu=False)
    with pytest.raises(UsageError, match="need a cluster; preset local is this computer"):
        holder_spec(load_preset("local"), PATHS.name, 10, gpu=False)


def test_connection_file_values_are_checked() -> None:
    good = Connection.parse('{"host": "node12.cluster", "port": 40123, "token": "' + "ab" * 24 + '"}')
    assert (good.host, good.port) == ("node12.cluster", 40123)
    for host, port, token in (("-oProxyCommand=x", 1, "ab" * 24), ("n1", 0, "ab" * 24), ("n1", 70000, "ab" * 24),
                              ("n1", 5, "short"), ("n 1", 5, "ab" * 24)):
        with pytest.raises(UsageError):
            Connection.parse(json.dumps({"host": host, "port": port, "token": token}))
    with pytest.raises(UsageError):
        Connection.parse("not json")


def test_session_names() -> None:
    assert check_session_name(new_session_name())
    for bad in ("../../etc", "i-1", "", "i-20260101-120000-ab12/x"):
        with pytest.raises(UsageError):
            check_session_name(bad)


def test_node_script_is_valid_bash() -> None:
    done = subprocess.run(["bash", "-n"], input=node_script.SCRIPT, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr


def _session_dir(tmp_path: Path, command: str) -> tuple[Path, Path]:
    directory = tmp_path / "interactive" / "i-20260101-120000-ab12"
    directory.mkdir(parents=True)
    script = directory / node_script.NAME
    script.write_text(node_script.SCRIPT)
    (directory / "hostname.txt").write_text("node7\n")
    (directory / "command.sh").write_text(f"#!/bin/sh\n{command}\n")
    return directory, script


def _wait_file(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_exec_writes_a_private_connection_file_and_stop_ends_the_group(tmp_path: Path) -> None:
    # The command leaves a child behind in its group (a server's worker): stop must end both.
    directory, script = _session_dir(tmp_path, 'sleep 300 & echo "port $BRAAS_PORT"; exec sleep 301')
    runner = subprocess.Popen(["bash", str(script), "exec", str(directory)])
    try:
        pgid = int(_wait_file(directory / "command.pid").split()[0])
        conn_file = directory / "connection.json"
        assert stat.S_IMODE(conn_file.stat().st_mode) == 0o600
        conn = Connection.parse(conn_file.read_text())
        assert conn.host == "node7" and len(conn.token) == 48
        assert f"port {conn.port}" in _wait_file(directory / "command.log")
        assert _group_alive(pgid) and pgid != os.getpgid(0)
        done = subprocess.run(["bash", str(script), "stop", str(directory)], capture_output=True, text=True)
        assert done.stdout.strip() == "stopped"
        assert not _group_alive(pgid)
        assert runner.wait(timeout=10) == 143  # the command's status: ended by SIGTERM
        assert _wait_file(directory / "command.exit").strip() == "143"
    finally:
        if runner.poll() is None:
            runner.kill()


def test_stop_never_signals_a_reused_pid(tmp_path: Path) -> None:
    directory, script = _session_dir(tmp_path, "true")
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        # command.pid names a live group, but with another start time: the pid was reused.
        (directory / "command.pid").write_text(f"{bystander.pid} 1\n")
        done = subprocess.run(["bash", str(script), "stop", str(directory)], capture_output=True, text=True)
        assert done.stdout.strip() == "ended"
        assert bystander.poll() is None
    finally:
        os.killpg(bystander.pid, signal.SIGKILL)
        bystander.wait()


async def _echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0, family=socket.AF_INET)


async def _round_trip(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hello")
    await writer.drain()
    data = await reader.read(5)
    writer.close()
    return data


def test_watchdog_reopens_on_the_same_port_and_close_stops_it() -> None:
    async def work() -> None:
        server = await _echo_server()
        events: list[str] = []
        tunnel = Tunnel(LocalTransport, "127.0.0.1", server.sockets[0].getsockname()[1], check_s=0.05,
                        on_event=events.append)
        port = await tunnel.open()
        assert await _round_trip(port) == b"hello"
        assert tunnel._forward is not None
        await tunnel._forward.close()  # the forward dies behind the tunnel's back
        for _ in range(100):
            if tunnel.stats.last_reopen_s is not None:
                break
            await asyncio.sleep(0.02)
        assert tunnel.stats.drops == 1 and tunnel.stats.opened == 2 and tunnel.local_port == port
        assert await _round_trip(port) == b"hello"
        await tunnel.close()
        with pytest.raises(OSError):
            await _round_trip(port)
        assert events[-1].endswith("closed")
        server.close()

    asyncio.run(work())


def test_blenderphi_needs_an_explicit_yes_to_its_open_port() -> None:
    """BlenderPhi cannot check a token: the CLI refuses it without --open-port, saying who can reach the port,
    before it reads any session or contacts the cluster."""
    from tests.conftest import run_cli

    done = run_cli("interactive", "serve", "i-20260101-120000-ab12", "--type", "blenderphi")
    assert done.returncode == 2, done.stderr
    assert "no authentication" in done.stderr and "every user and job on that node" in done.stderr
    assert "--open-port" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(UsageError, match="cluster's internal network"):
        asyncio.run(start_server(None, "BLENDERPHI"))  # type: ignore[arg-type]  # refused before the record is used
    launch.require_open_port_ok("BLENDERPHI", True)
    launch.require_open_port_ok("BUILTIN", False)


CONNECT_AS_STRANGER = """
import json, socket, sys
result = {}
try:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(sys.argv[1])
    result["connect"] = "connected"
    result["data"] = s.recv(100).decode(errors="replace")
except OSError as err:
    result["connect"] = type(err).__name__
try:
    result["listing"] = __import__("os").listdir(sys.argv[2])
except OSError as err:
    result["listing"] = type(err).__name__
print(json.dumps(result))
"""


def test_unix_socket_tunnel_is_private_and_survives_a_reopen() -> None:
    """The tunnel's local end is a socket of mode 0600 in a 0700 directory: another local user can neither
    connect to it nor see it, before or after the watchdog re-opens it at the same path."""
    from braas_hpc_interactive.core.client import open_socket
    from braas_hpc_interactive.core.tunnel import private_dir, socket_path
    from tests.interactive_stranger import as_stranger, stranger_user

    def talk(path: str) -> bytes:
        with open_socket(path, 0, 5) as sock:
            sock.sendall(b"hello")
            return sock.recv(5)

    async def work(user: str) -> list[dict[str, str]]:
        server = await _echo_server()
        path = socket_path("i-20260101-120000-ab12")
        tunnel = Tunnel(LocalTransport, "127.0.0.1", server.sockets[0].getsockname()[1], check_s=0.05,
                        local_path=path)
        await tunnel.open()
        seen = []
        for _ in range(2):
            assert tunnel.address == (path, 0) and tunnel.local_port == 0
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(path).st_mode)
            assert await asyncio.to_thread(talk, path) == b"hello"
            done = await asyncio.to_thread(subprocess.run, as_stranger(CONNECT_AS_STRANGER, path, str(private_dir())),
                                           capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            seen.append(json.loads(done.stdout))
            assert tunnel._forward is not None
            await tunnel._forward.close()  # the forward dies behind the tunnel's back; the same path again
            for _ in range(200):
                if tunnel.stats.opened == len(seen) + 1:
                    break
                await asyncio.sleep(0.02)
        await tunnel.close()
        assert not os.path.exists(path)  # its socket removed with it
        server.close()
        return seen

    with stranger_user() as user:
        seen = asyncio.run(work(user))
    assert stat.S_IMODE(private_dir().stat().st_mode) == 0o700
    assert seen == [{"connect": "PermissionError", "listing": "PermissionError"}] * 2


def test_private_dir_refuses_one_made_by_someone_else(tmp_path: Path) -> None:
    from braas_hpc.core.errors import BraasError
    from braas_hpc_interactive.core.tunnel import private_dir

    planted = tmp_path / f"braas-tunnels-{os.getuid()}"
    planted.mkdir(mode=0o777)
    os.chmod(planted, 0o777)  # as another user would leave it for us to use
    with pytest.raises(BraasError, match="mode 0700"):
        private_dir(str(tmp_path))
    planted.rmdir()
    planted.symlink_to(tmp_path)
    with pytest.raises(BraasError, match="mode 0700"):
        private_dir(str(tmp_path))


def test_a_file_in_the_sockets_place_is_not_removed() -> None:
    from braas_hpc.core.errors import ConnectionFailed
    from braas_hpc_interactive.core.tunnel import socket_path

    path = socket_path("not-a-socket")
    Path(path).write_text("mine")
    try:
        with pytest.raises(ConnectionFailed, match="is not a socket"):
            asyncio.run(LocalTransport().forward("127.0.0.1", 9, local_path=path))
        assert Path(path).read_text() == "mine"
    finally:
        os.unlink(path)
