"""What the CLI prints of text others wrote (error messages quoting the user's input, a cluster's logs,
a server's prompts): shown as it is, never interpreted by the terminal or by rich's markup."""

from __future__ import annotations

from pathlib import Path

import pytest

from braas_hpc.core import registry
from braas_hpc.core.display import plain
from braas_hpc.core.jobs import JobPaths, JobSpec
from braas_hpc.prompts import TerminalPrompts
from tests.conftest import run_cli

# What a terminal would act on: a window title, clear screen, an 8-bit CSI, a bell, a bidi override.
HOSTILE = "a\x1b]0;owned\x07b\x1b[2Jc\x9b31md\u202eevil\x00e\rf"
ACTED_ON = ("\x1b", "\x07", "\x9b", "\u202e", "\x00", "\r")


def test_plain_keeps_text_and_shows_controls() -> None:
    assert plain("line 1\n\tline 2\r\nümlaut ✓ [/bold]") == "line 1\n\tline 2\nümlaut ✓ [/bold]"
    shown = plain(HOSTILE)
    assert not any(c in shown for c in ACTED_ON)
    assert shown == "a\\x1b]0;owned\\x07b\\x1b[2Jc\\x9b31md\\u202eevil\\x00e\\x0df"


def test_markup_in_an_error_message_is_printed_as_is(user_dirs: dict[str, str], tmp_path: Path) -> None:
    for name in ("nope[/bold].blend", "x[/].blend", "[red]y.blend"):
        done = run_cli("render", str(tmp_path / name), "--frames", "1")
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "scene file not found" in done.stderr
        assert name in done.stderr


def test_control_characters_in_an_error_message_are_shown_not_acted_on(user_dirs: dict[str, str],
                                                                         tmp_path: Path) -> None:
    done = run_cli("render", str(tmp_path / "s\x1b[2J\x1b]0;t\x07.blend"), "--frames", "1")
    assert done.returncode == 2 and "scene file not found" in done.stderr
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr and "s\\x1b[2J" in done.stderr


def test_remote_logs_are_shown_not_acted_on(user_dirs: dict[str, str], tmp_path: Path) -> None:
    paths = JobPaths(str(tmp_path / "cluster" / "braas-hpc"), "job-20260101-000000-abcd")
    Path(paths.log_dir).mkdir(parents=True)
    Path(paths.log_dir, "task-1.log").write_text(f"rendering\n{HOSTILE}\n[/bold] done\n", encoding="utf-8")
    spec = JobSpec(name=paths.name, preset="local", scene="/s.blend", frames=(1,), tasks=((1,),))
    registry.add_job(spec, paths.root, {}, "COMPLETED")
    done = run_cli("logs", paths.name)
    assert done.returncode == 0, done.stderr
    assert not any(c in done.stdout for c in ACTED_ON), done.stdout
    assert "a\\x1b]0;owned\\x07b" in done.stdout and "[/bold] done" in done.stdout
    as_json = run_cli("logs", paths.name, "--json")  # a document for programs: the text as it is, JSON-escaped
    assert as_json.returncode == 0 and "\x1b" not in as_json.stdout and "\\u001b]0;owned" in as_json.stdout


def test_server_prompts_are_shown_not_acted_on(capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return "123456"

    prompts = TerminalPrompts(ask_secret=ask, ask=ask, interactive=True)
    assert prompts.kbdint(f"name {HOSTILE}", f"instructions {HOSTILE}", [(f"code {HOSTILE}: ", False)]) == ["123456"]
    shown = capsys.readouterr().err + "".join(asked)
    assert "name a\\x1b]0;owned" in shown and "code a\\x1b" in shown
    assert not any(c in shown for c in ACTED_ON), shown


def test_loading_the_asyncssh_back_end_prints_no_deprecation_warnings() -> None:
    """asyncssh names DSA key types as it loads; cryptography warns of each. Shown warnings included
    (-W default), the back end loads silently: the CLI's stderr is for the user's errors."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-W", "default", "-c", "import braas_hpc.core.transport.asyncssh_"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
