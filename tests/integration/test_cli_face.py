"""The CLI as scripts and people meet it: its exit statuses (README: 0 ok, 1 the job failed, 2 bad input,
3 a cluster could not be reached, 124 `wait --timeout` ran out, 130 interrupted); what `--debug` and
`--log-file` tell (every command run on the cluster, with its exit status and time, in a private file);
progress drawn on a terminal, and nowhere else."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from braas_hpc import cli
from tests.conftest import REPO, run_cli
from tests.helpers import partition_closed
from tests.integration.test_keeper import write_preset
from tests.testbed import testbed as tb


def _closed_port() -> int:
    with socket.socket() as probe:  # bound, never listening: a connection to it is refused at once
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko", "openssh"])
def test_a_cluster_that_refuses_the_connection_is_exit_3(testbed: tb.Testbed, backend: str) -> None:
    write_preset(testbed, "tb-refused", port=_closed_port(), ssh_backend=backend)
    done = run_cli("test", "tb-refused")
    assert done.returncode == 3, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "refused" in done.stderr.lower(), done.stderr
    scripted = run_cli("test", "tb-refused", "--json")
    assert scripted.returncode == 3 and json.loads(scripted.stdout)["error"]["kind"] == "connection", scripted.stdout


def test_bad_input_with_json_is_a_json_error_on_stdout(user_dirs: dict[str, str]) -> None:
    done = run_cli("wait", "no-such-job", "--json")
    error = json.loads(done.stdout)["error"]
    assert done.returncode == 2 and (error["kind"], error["exit_code"]) == ("usage", 2), done.stdout
    assert "no job named 'no-such-job'" in error["message"] and "no job named" in done.stderr


def test_wait_that_runs_out_is_exit_124_and_the_job_goes_on(testbed: tb.Testbed, sample_scene: Path) -> None:
    # The job queues on a closed partition: it cannot end before both waits have run out, however fast
    # the cluster is (three frames once ended between the two).
    with partition_closed(testbed.slurm_conf):
        _waits_run_out(sample_scene)


def _waits_run_out(sample_scene: Path) -> None:
    submitted = run_cli("submit", str(sample_scene), "--preset", "testbed", "--frames", "1-3", "--max-parallel", "1",
                        "--json")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)["job"]
    try:
        waited = run_cli("wait", job, "--timeout", "0")
        assert waited.returncode == 124, waited.stderr
        assert f"braas-hpc wait {job}" in waited.stderr and "Traceback" not in waited.stderr
        scripted = run_cli("wait", job, "--timeout", "0", "--json")  # the reason where a script reads results
        error = json.loads(scripted.stdout)["error"]
        assert scripted.returncode == 124 and error["kind"] == "timeout" and error["exit_code"] == 124, error
        assert f"braas-hpc wait {job}" in error["message"]
    finally:
        run_cli("cancel", job)


def test_debug_and_log_file_tell_every_remote_command_and_the_file_is_private(testbed: tb.Testbed,
                                                                              tmp_path: Path) -> None:
    log = tmp_path / "braas.log"
    shown = run_cli("test", "testbed", "--debug", "--log-file", str(log))
    assert shown.returncode == 0, shown.stderr
    commands = [line for line in shown.stderr.splitlines()
                if line.startswith("braas-hpc: debug:") and " -> exit " in line]
    assert commands and all(" s (" in line for line in commands), shown.stderr
    written = log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert sum(" -> exit " in line for line in written.splitlines()) == len(commands), written
    quiet = run_cli("--log-file", str(log), "test", "testbed")  # the option before the verb; nothing shown
    assert quiet.returncode == 0 and "debug:" not in quiet.stderr, quiet.stderr
    assert log.read_text().count(" -> exit ") == 2 * len(commands)  # appended, not replaced


def test_a_log_file_through_a_link_is_refused(user_dirs: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "someone-elses.log"
    target.write_text("theirs\n")
    link = tmp_path / "braas.log"
    link.symlink_to(target)
    done = run_cli("--log-file", str(link), "presets")
    assert done.returncode == 2 and "is a symbolic link" in done.stderr, done.stderr
    assert target.read_text() == "theirs\n"


def test_an_os_error_is_a_sentence_not_a_traceback(user_dirs: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    async def refused(_args: object) -> int:
        raise PermissionError(13, os.strerror(13), "/somewhere/frames")

    monkeypatch.setattr(cli, "cmd_presets", refused)
    assert cli.main(["presets"]) == 1
    said = capsys.readouterr().err
    assert "Permission denied: /somewhere/frames" in said and "Traceback" not in said, said


def _on_a_terminal(*args: str) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal (as a user's shell has it): its exit status, what it printed
    and what it drew."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    process = subprocess.Popen([sys.executable, "-m", "braas_hpc.cli", *args], stdout=subprocess.PIPE,
                               stderr=secondary, env=env, cwd=REPO)
    os.close(secondary)
    drawn = bytearray()
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the CLI closed its end
            break
        if not chunk:
            break
        drawn += chunk
    printed, _ = process.communicate(timeout=600)
    os.close(primary)
    return process.returncode, printed.decode(), drawn.decode(errors="replace")


def test_a_long_submit_and_wait_show_their_progress_on_a_terminal_only(testbed: tb.Testbed, tmp_path: Path) -> None:
    """A scene with 30 MB of texture the cluster has never seen: the terminal shows the packing, the
    upload in human units with its rate, then `wait` the frames; `--json` and a pipe show nothing."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "examples" / "sample", project)
    with (project / "textures" / "checker.png").open("ab") as texture:  # PNG readers ignore what follows
        texture.write(secrets.token_bytes(30 << 20))
    status, printed, drawn = _on_a_terminal("submit", str(project / "sample.blend"), "--preset", "testbed",
                                            "--frames", "1-2")
    assert status == 0, drawn
    assert "packing" in drawn and "uploading" in drawn, drawn
    assert re.search(r"[0-9.]+ MB/[0-9.]+ MB at [0-9.]+ [kMG]B/s", drawn), drawn  # human units, with the rate
    job = printed.strip().splitlines()[-1].strip()
    status, _, drawn = _on_a_terminal("wait", job, "--timeout", "600")
    assert status == 0 and re.search(r"frames.*[0-2]/2", drawn), drawn
    status, _, drawn = _on_a_terminal("submit", str(project / "sample.blend"), "--preset", "testbed", "--frames", "1",
                                      "--json")
    assert status == 0 and "packing" not in drawn and "uploading" not in drawn, drawn
    piped = run_cli("submit", str(project / "sample.blend"), "--preset", "testbed", "--frames", "1")
    assert piped.returncode == 0 and "packing" not in piped.stderr, piped.stderr


def test_ctrl_c_in_the_middle_of_an_upload_says_how_to_go_on_and_the_same_command_does(testbed: tb.Testbed,
                                                                                       tmp_path: Path) -> None:
    """Ctrl+C while a 400 MB texture the cluster has never seen is being sent: exit 130 with what to do;
    the same command again resumes that submission (the same job, the bytes already sent not sent
    again) and the frame renders with the texture."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "examples" / "sample", project)
    with (project / "textures" / "checker.png").open("ab") as texture:  # PNG readers ignore what follows
        texture.write(secrets.token_bytes(400 << 20))
    argv = [sys.executable, "-m", "braas_hpc.cli", "submit", str(project / "sample.blend"), "--preset", "testbed",
            "--frames", "1"]
    primary, secondary = pty.openpty()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=secondary, stdin=secondary, cwd=REPO,
                               env={**os.environ, "COLUMNS": "160", "TERM": "xterm"}, start_new_session=True)
    os.close(secondary)
    drawn = bytearray()
    sent = re.compile(rb"([0-9.]+) MB/[0-9.]+ MB")
    while not any(float(m) >= 50 for m in sent.findall(drawn)):  # the upload is well under way
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the command ended first
            chunk = b""
        assert chunk, drawn.decode(errors="replace")
        drawn += chunk
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl+C does
    with contextlib.suppress(OSError):
        while chunk := os.read(primary, 65536):
            drawn += chunk
    printed, _ = process.communicate(timeout=120)
    os.close(primary)
    said = drawn.decode(errors="replace")
    assert process.returncode == 130, said
    assert "the same command again resumes this submission" in said and "Traceback" not in said, said
    assert not printed.strip(), printed  # no job was announced

    again = run_cli(*argv[3:], "--json")
    assert again.returncode == 0, again.stderr
    resumed = json.loads(again.stdout)
    # What the first try sent was kept (less what was still in flight when it stopped).
    assert resumed["uploaded_bytes"] < (400 << 20) - (20 << 20), resumed
    waiting = Path(os.environ["BRAAS_HPC_DATA_DIR"]) / "pending-packs"
    assert not list(waiting.glob("*.blend")), list(waiting.iterdir())  # delivered: no local copy left
    assert run_cli("wait", resumed["job"], "--timeout", "600", timeout=700).returncode == 0


def test_a_refused_submission_leaves_no_local_copy_and_the_next_sends_nothing(testbed: tb.Testbed,
                                                                             tmp_path: Path) -> None:
    """The scheduler refuses the job (a partition the cluster does not have) after the packed scene
    reached the cluster's store: no packed copy waits on this computer for a week, and the next
    submission of the same scene sends no byte of it."""
    write_preset(testbed, "tb-refused", partition_cpu="qnowhere")
    project = tmp_path / "project"
    shutil.copytree(REPO / "examples" / "sample", project)
    scene = str(project / "sample.blend")
    refused = run_cli("submit", scene, "--preset", "tb-refused", "--frames", "1", "--pack", "packed")
    assert refused.returncode != 0 and "qnowhere" in refused.stderr + refused.stdout, refused.stderr
    waiting = Path(os.environ["BRAAS_HPC_DATA_DIR"]) / "pending-packs"
    assert not list(waiting.glob("*.blend")), list(waiting.iterdir())
    again = run_cli("submit", scene, "--preset", "testbed", "--frames", "1", "--pack", "packed", "--json")
    assert again.returncode == 0, again.stderr
    done = json.loads(again.stdout)
    assert done["uploaded_bytes"] == 0, done
    run_cli("cancel", done["job"])
