"""An unknown host through the CLI, on each SSH back end against the test cluster's real sshd:
fingerprint shown (the one ssh-keygen computes from the server's own key file), recorded only on an
explicit yes, never asked again once known; a changed key is refused even when the user says yes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from braas_hpc import cli
from braas_hpc.core.presets import load_preset
from braas_hpc.prompts import TerminalPrompts
from tests.conftest import run_cli

BACKENDS = ("asyncssh", "paramiko", "openssh")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def untrusted(testbed, tmp_path: Path) -> Iterator[Path]:  # noqa: ANN001
    """The `tb-untrusted` preset: the test cluster, with a known_hosts file of this test's own (empty)."""
    base = load_preset("testbed")
    known = tmp_path / "known_hosts"
    text = Path(base.source).read_text().replace(f'known_hosts = "{base.known_hosts}"', f'known_hosts = "{known}"')
    assert str(known) in text
    preset = Path(base.source).parent / "tb-untrusted.toml"
    preset.write_text(text.replace('name = "testbed"', 'name = "tb-untrusted"'))
    yield known
    preset.unlink(missing_ok=True)


@pytest.fixture
def server_key(testbed) -> tuple[str, str]:  # noqa: ANN001
    """(SHA256 fingerprint, its known_hosts line) of the sshd's ed25519 host key, computed without braas-hpc."""
    pub = Path(testbed.base_dir) / "sshd" / "ssh_host_ed25519_key.pub"
    listed = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    key_type, blob = pub.read_text().split()[:2]
    return listed.split()[1], f"[127.0.0.1]:{testbed.ssh_port} {key_type} {blob}\n"


def _saying(answer: str, asked: list[str]) -> TerminalPrompts:
    """A terminal user who gives `answer` to every question (yes/no, passphrase, code) and is recorded."""
    def ask(prompt: str) -> str:
        asked.append(prompt)
        return answer
    return TerminalPrompts(ask_secret=ask, ask=ask, interactive=True)


def _known(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_unknown_host_in_a_script_is_refused_with_its_fingerprint(untrusted: Path, backend: str,
                                                                  server_key: tuple[str, str]) -> None:
    done = run_cli("test", "tb-untrusted", "--ssh-backend", backend)
    assert done.returncode == 3, done.stderr  # the cluster could not be reached: it was not trusted
    assert "is not a known host" in done.stderr and server_key[0] in done.stderr
    assert "nothing was recorded" in done.stderr
    assert _known(untrusted) == ""


def test_unknown_host_is_recorded_on_yes_only(untrusted: Path, backend: str, server_key: tuple[str, str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def test(answer: str, asked: list[str]) -> int:
        return cli.main(["test", "tb-untrusted", "--ssh-backend", backend], _saying(answer, asked))

    refused: list[str] = []
    assert test("n", refused) == 3  # not trusted: the cluster could not be reached
    assert len(refused) == 1 and server_key[0] in refused[0]  # the fingerprint the user compares
    assert _known(untrusted) == ""
    trusted: list[str] = []
    assert test("yes", trusted) == 0
    assert len(trusted) == 1 and server_key[0] in trusted[0]
    assert _known(untrusted) == server_key[1]  # the server's own key, nothing else
    again: list[str] = []
    assert test("n", again) == 0 and again == []  # known now: not asked again
    assert "working directory /home/braastb/work: writable" in capsys.readouterr().out


def test_changed_host_key_is_refused_even_on_yes(untrusted: Path, backend: str, tmp_path: Path, testbed,  # noqa: ANN001
                                                capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    line = f"[127.0.0.1]:{testbed.ssh_port} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n"
    untrusted.write_text(line)
    asked: list[str] = []
    code = cli.main(["test", "tb-untrusted", "--ssh-backend", backend], _saying("yes", asked))
    assert code != 0 and asked == []  # a changed key is never offered for trust
    assert "CHANGED" in capsys.readouterr().err
    assert untrusted.read_text() == line

