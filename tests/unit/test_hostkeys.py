from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import pytest

from braas_hpc.core.errors import HostKeyChanged, HostKeyUnknown, UsageError
from braas_hpc.core.transport.hostkeys import check_host_key, fingerprint, recorded_keys, trust_host_key

BLOB = b"\x00\x00\x00\x0bssh-ed25519" + bytes(range(36))
OTHER = b"\x00\x00\x00\x0bssh-ed25519" + bytes(range(1, 37))
KEY = f"ssh-ed25519 {base64.b64encode(BLOB).decode()}"


def _hashed(name: str) -> str:
    salt = os.urandom(20)
    mac = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(mac).decode()}"


@pytest.mark.parametrize("pattern", ["[10.0.0.1]:2222", "*:2222,other", "[10.0.0.?]:2222", "[10.0.0.1]:2222"])
def test_patterns_match(tmp_path: Path, pattern: str) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"# comment\n{pattern} {KEY}\n")
    assert recorded_keys(known, "10.0.0.1", 2222) == [("ssh-ed25519", BLOB)]
    assert recorded_keys(known, "10.0.0.2" if "?" not in pattern and "*" not in pattern else "x", 22) == []


def test_hashed_and_negated_entries(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"{_hashed('login.example.org')} {KEY}\n*.example.org,!bad.example.org {KEY}\n")
    assert recorded_keys(known, "login.example.org", 22) == [("ssh-ed25519", BLOB)] * 2
    assert recorded_keys(known, "bad.example.org", 22) == []


def test_unknown_changed_and_trusted(tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    with pytest.raises(HostKeyUnknown) as info:
        check_host_key(str(known), "h", 2200, "ssh-ed25519", BLOB)
    assert info.value.fingerprint == fingerprint(BLOB) and info.value.fingerprint.startswith("SHA256:")
    trust_host_key(str(known), "h", 2200, info.value.public_key)
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    check_host_key(str(known), "h", 2200, "ssh-ed25519", BLOB)  # now trusted
    with pytest.raises(HostKeyChanged, match="CHANGED"):
        check_host_key(str(known), "h", 2200, "ssh-ed25519", OTHER)
    with pytest.raises(HostKeyUnknown):
        check_host_key(str(known), "h", 22, "ssh-ed25519", BLOB)  # another port is another host


def test_fingerprint_matches_openssh(tmp_path: Path) -> None:
    import subprocess

    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    line = (tmp_path / "k.pub").read_text()
    listed = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True, text=True, check=True)
    expected = listed.stdout.split()[1]
    assert fingerprint(base64.b64decode(line.split()[1])) == expected


@pytest.mark.parametrize("host", ["*", "a\nb", "h*", "a,b", "!x", "a b", "|1|x|y", "@cert-authority", ""])
def test_a_host_pattern_is_never_recorded(tmp_path: Path, host: str) -> None:
    """Trusting `*` recorded a line that then matched every host; a newline would add a line of its own."""
    known = tmp_path / "known_hosts"
    with pytest.raises(UsageError, match="cannot be recorded in known_hosts"):
        trust_host_key(str(known), host, 22, KEY)
    assert not known.exists()
    with pytest.raises(HostKeyUnknown):
        check_host_key(str(known), "anything.example.org", 22, "ssh-ed25519", BLOB)


@pytest.mark.parametrize("pattern", ["*", "[h]:*", "[h]:2200,other", None])
def test_a_revoked_key_is_refused_even_when_recorded(tmp_path: Path, pattern: str | None) -> None:
    """OpenSSH refuses a key listed `@revoked`; so does our check (used by the paramiko back end), and it is
    never offered for trust either."""
    from braas_hpc.core.errors import HostKeyRevoked

    known = tmp_path / "known_hosts"
    plain = f"[h]:2200 {KEY}\n" if pattern else ""
    known.write_text(f"{plain}@revoked {pattern or _hashed('[h]:2200')} {KEY}\n")
    with pytest.raises(HostKeyRevoked, match="REVOKED") as info:
        check_host_key(str(known), "h", 2200, "ssh-ed25519", BLOB)
    assert not isinstance(info.value, HostKeyUnknown)  # the CLI offers to trust only an unknown key


def test_a_certificate_authority_is_not_a_host_key(tmp_path: Path) -> None:
    """`@cert-authority` lines vouch for host certificates (which the paramiko back end does not check): the
    CA's key itself is no host key, and odd lines do not stop the check."""
    known = tmp_path / "known_hosts"
    known.write_text(f"@cert-authority * {KEY}\n@cert-authority\n@revoked\n@revoked *\n@cert-authority * x y\n"
                     f"@unknown-marker h {KEY}\n")
    assert recorded_keys(known, "h", 22) == []
    with pytest.raises(HostKeyUnknown, match="certificate authority"):
        check_host_key(str(known), "h", 22, "ssh-ed25519", BLOB)
