"""The argv each interactive server type runs with: exact words, and what a real shell makes of them.

`session.run` writes `exec <quote_command(argv)>` into command.sh; here that line runs under /bin/sh with
a stand-in program that prints the argv and environment it received, so quoting mistakes (a .blend
name with spaces or quotes, a `$` in a command) show up as a wrong argv, not as a review comment."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from braas_hpc.core.errors import UsageError
from braas_hpc.core.presets import load_preset
from braas_hpc.core.transport import quote_command
from braas_hpc_interactive.core import launch
from braas_hpc_interactive.core.records import SessionRecord

RECORD = SessionRecord(name="i-20260101-120000-ab12", preset="karolina", scheduler="slurm", job_id="42",
                       root="/scratch/my proj/braas-hpc", walltime_min=60, gpu=True, created=0.0)
SESSION_DIR = "/scratch/my proj/braas-hpc/interactive/i-20260101-120000-ab12"
HOSTILE = "/scratch/my proj/it's a \"scene\" $(touch pwned) `id`; rm -rf ~.blend"
TOKEN = "ab" * 24
ECHO = """import json, os, sys
names = ("BRAAS_PORT", "CYCLES_BRAAS_HPC_INTERACTIVE_MODE", "CYCLES_BRAAS_HPC_SERVER_PORT", "SETUP")
print(json.dumps({"argv": sys.argv[1:], "env": {n: os.environ.get(n) for n in names}}))
"""


@pytest.fixture
def echo(tmp_path: Path) -> Path:
    """An executable that reports its argv and a few environment variables as JSON."""
    path = tmp_path / "bin" / "echo-argv"
    path.parent.mkdir()
    path.write_text(f"#!{sys.executable}\n{ECHO}")
    path.chmod(0o755)
    return path


def run_as_command_sh(argv: list[str], cwd: Path, home: Path | None = None) -> dict:
    """What the node does with command.sh: sh runs `exec` of the quoted argv, with the session variables."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home or cwd), "BRAAS_PORT": "40123", "BRAAS_TOKEN": TOKEN,
           "BRAAS_HOST": "node7", "BRAAS_SESSION_DIR": SESSION_DIR}
    done = subprocess.run(["/bin/sh", "-c", f"exec {quote_command(argv)}"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert not (cwd / "pwned").exists()
    return json.loads(done.stdout)


def test_builtin_argv_is_exact() -> None:
    preset = load_preset("karolina")
    argv = launch.server_argv(launch.BUILTIN, preset, RECORD, True, blendfile="/scratch/p/scene.blend")
    assert argv == ["blender", "-b", "-Y", "/scratch/p/scene.blend", "-P", f"{SESSION_DIR}/render_server.py",
                    "--", "--device", "CUDA"]
    cpu = launch.server_argv(launch.BUILTIN, preset, RECORD, False, blendfile="/s/a.blend", blender="/opt/b/blender")
    assert cpu[0] == "/opt/b/blender" and cpu[-2:] == ["--device", "CPU"]


def test_blenderphi_argv_is_exact() -> None:
    argv = launch.server_argv(launch.BLENDERPHI, load_preset("lumi"), RECORD, True, blendfile="/s/a.blend")
    assert argv[:5] == ["sh", "-c", launch._BLENDERPHI_WRAPPER, "braas-blenderphi", "~/blenderphi/blender"]
    assert argv[5:] == ["--factory-startup", "--disable-autoexec", "-noaudio", "--background", "/s/a.blend",
                        "-E", "CYCLES", "--render-output", f"{SESSION_DIR}/out/######", "--render-frame", "1",
                        "--", "--cycles-device", "HIP"]


def test_builtin_survives_a_hostile_blendfile_name(tmp_path: Path, echo: Path) -> None:
    preset = dataclasses.replace(load_preset("karolina"), blender=str(echo))
    argv = launch.server_argv(launch.BUILTIN, preset, RECORD, False, blendfile=HOSTILE)
    got = run_as_command_sh(argv, tmp_path)
    assert got["argv"] == ["-b", "-Y", HOSTILE, "-P", f"{SESSION_DIR}/render_server.py", "--", "--device", "CPU"]


def test_builtin_runs_an_installed_blenders_setup_lines_first(tmp_path: Path, echo: Path) -> None:
    argv = launch.server_argv(launch.BUILTIN, load_preset("karolina"), RECORD, False, blendfile=HOSTILE,
                              blender=str(echo), setup=["export SETUP='module loaded'"])
    got = run_as_command_sh(argv, tmp_path)
    assert got["env"]["SETUP"] == "module loaded" and got["argv"][2] == HOSTILE


def test_blenderphi_gets_its_port_and_mode_from_the_session(tmp_path: Path, echo: Path) -> None:
    home = tmp_path / "home"
    (home / "blenderphi").mkdir(parents=True)
    (home / "blenderphi" / "blender").symlink_to(echo)
    argv = launch.server_argv(launch.BLENDERPHI, load_preset("karolina"), RECORD, True, blendfile=HOSTILE)
    got = run_as_command_sh(argv, tmp_path, home=home)  # "~/blenderphi/blender" resolved on the node
    assert got["env"]["CYCLES_BRAAS_HPC_INTERACTIVE_MODE"] == "1"
    assert got["env"]["CYCLES_BRAAS_HPC_SERVER_PORT"] == "40123"
    assert got["argv"][4] == HOSTILE and got["argv"][-1] == "CUDA"
    # An absolute path is taken as it is.
    argv = launch.server_argv(launch.BLENDERPHI, load_preset("karolina"), RECORD, False, blendfile="/s/a b.blend",
                              blenderphi=str(echo))
    assert run_as_command_sh(argv, tmp_path)["argv"][4] == "/s/a b.blend"


def test_command_is_split_like_a_shell_and_only_session_variables_expand(tmp_path: Path, echo: Path) -> None:
    plain = launch.server_argv(launch.COMMAND, load_preset("karolina"), RECORD, False,
                               command=f"{echo} --dir 'a b' \"it's\"")
    assert plain == [str(echo), "--dir", "a b", "it's"]
    assert run_as_command_sh(plain, tmp_path)["argv"] == ["--dir", "a b", "it's"]
    text = f"{echo} --port $BRAAS_PORT --ip=${{BRAAS_HOST}} '$HOME' \"$(id)\" tok=$BRAAS_TOKEN; x"
    argv = launch.server_argv(launch.COMMAND, load_preset("karolina"), RECORD, False, command=text)
    assert argv[:4] == ["bash", "-c", launch._EXPAND_WRAPPER, "braas-command"]
    got = run_as_command_sh(argv, tmp_path)
    assert got["argv"] == ["--port", "40123", "--ip=node7", "$HOME", "$(id)", f"tok={TOKEN};", "x"]


def test_bad_input_is_refused_with_a_reason() -> None:
    preset = load_preset("karolina")
    with pytest.raises(UsageError, match="absolute"):
        launch.server_argv(launch.BUILTIN, preset, RECORD, False, blendfile="scene.blend")
    with pytest.raises(UsageError, match="no .blend"):
        launch.server_argv(launch.BLENDERPHI, preset, RECORD, False, blendfile=" ")
    with pytest.raises(UsageError, match="no command"):
        launch.server_argv(launch.COMMAND, preset, RECORD, False, command="  ")
    with pytest.raises(UsageError, match="cannot be split"):
        launch.server_argv(launch.COMMAND, preset, RECORD, False, command="echo 'unclosed")
    with pytest.raises(UsageError, match="unknown interactive type"):
        launch.server_argv("JUPYTER", preset, RECORD, False)
