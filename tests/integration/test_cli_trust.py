"""An unknown host through the CLI: fingerprint shown, recorded only on an explicit yes."""

from __future__ import annotations

from pathlib import Path

import pytest

from braas_hpc import cli
from braas_hpc.core.presets import load_preset
from braas_hpc.prompts import TerminalPrompts
from tests.conftest import run_cli


@pytest.fixture
def untrusted(testbed, tmp_path: Path) -> Path:  # noqa: ANN001
    base = load_preset("testbed")
    known = tmp_path / "known_hosts"
    text = Path(base.source).read_text().replace(f'known_hosts = "{base.known_hosts}"', f'known_hosts = "{known}"')
    assert str(known) in text
    (Path(base.source).parent / "tb-untrusted.toml").write_text(text.replace('name = "testbed"',
                                                                             'name = "tb-untrusted"'))
    return known


def test_unknown_host_in_a_script_is_refused_with_its_fingerprint(untrusted: Path) -> None:
    done = run_cli("test", "tb-untrusted")
    assert done.returncode == 1
    assert "is not a known host" in done.stderr and "SHA256:" in done.stderr and "nothing was recorded" in done.stderr
    assert not untrusted.exists() or untrusted.read_text() == ""


def test_unknown_host_is_recorded_on_yes_only(untrusted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answers: list[str] = []

    def say(answer: str):  # noqa: ANN202
        def ask(prompt: str) -> str:
            answers.append(prompt)
            return answer
        return ask

    assert cli.main(["test", "tb-untrusted"], TerminalPrompts(ask=say("n"), interactive=True)) == 1
    assert not untrusted.exists() or untrusted.read_text() == ""
    assert cli.main(["test", "tb-untrusted"], TerminalPrompts(ask=say("yes"), interactive=True)) == 0
    assert "[127.0.0.1]:2222 ssh-ed25519 " in untrusted.read_text()
    asked = len(answers)
    assert cli.main(["test", "tb-untrusted"], TerminalPrompts(ask=say("n"), interactive=True)) == 0
    assert len(answers) == asked  # known now: not asked again
    assert "SHA256:" in answers[0] and "working directory /home/braastb/work: writable" in capsys.readouterr().out
