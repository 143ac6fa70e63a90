"""known_hosts, read and written by us for all back ends, so trust decisions look the same everywhere.

Lookup understands plain and hashed (`|1|salt|hash`) host patterns, `[host]:port`, comma lists and
negated patterns. A key listed `@revoked` for the host is refused, as OpenSSH does. `@cert-authority`
lines vouch for host certificates, which asyncssh and OpenSSH check themselves: the CA's own key is
never taken for a host key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from pathlib import Path

from ..errors import HostKeyChanged, HostKeyRevoked, HostKeyUnknown, UsageError
from ..hostnames import valid_host_name

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


def known_hosts_path(configured: str | None) -> Path:
    return Path(configured or DEFAULT_KNOWN_HOSTS).expanduser()


def host_pattern(host: str, port: int) -> str:
    """The name OpenSSH records: `host` on port 22, `[host]:port` elsewhere."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key_blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob: `SHA256:<base64 without padding>`."""
    digest = hashlib.sha256(key_blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_public_key(line: str) -> tuple[str, bytes]:
    """(key type, blob) from "ssh-ed25519 AAAA... [comment]"."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError(f"not an OpenSSH public key: {line[:40]!r}")
    try:
        return parts[0], base64.b64decode(parts[1], validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not an OpenSSH public key: {line[:40]!r}") from exc


def _pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            _, _, salt, digest = pattern.split("|")
            mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(mac, base64.b64decode(digest))
        except (ValueError, binascii.Error):
            return False
    return _wildcard(pattern).fullmatch(name) is not None


def _wildcard(pattern: str) -> re.Pattern[str]:
    """OpenSSH patterns know only `*` and `?`; brackets are literal (`[host]:port`), unlike fnmatch."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()))


def _line_matches(patterns: str, name: str) -> bool:
    matched = False
    for pattern in patterns.split(","):
        if pattern.startswith("!"):
            if _pattern_matches(pattern[1:], name):
                return False
        elif _pattern_matches(pattern, name):
            matched = True
    return matched


def _entries(path: Path, host: str, port: int) -> list[tuple[str, tuple[str, bytes]]]:
    """(marker, key) of every line for host:port; marker is "" for a plain host key, else "@revoked",
    "@cert-authority" (or any other `@word`). Lines that do not parse are skipped, as OpenSSH does."""
    if not path.is_file():
        return []
    name = host_pattern(host, port).lower()
    found = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = raw.split()
        marker = fields.pop(0) if fields and fields[0].startswith("@") else ""
        if len(fields) < 3 or fields[0].startswith("#") or not _line_matches(fields[0], name):
            continue
        try:
            found.append((marker, parse_public_key(" ".join(fields[1:3]))))
        except ValueError:
            continue
    return found


def recorded_keys(path: Path, host: str, port: int) -> list[tuple[str, bytes]]:
    """Plain host keys recorded for host:port (certificate authorities and revocations excluded)."""
    return [key for marker, key in _entries(path, host, port) if not marker]


def check_host_key(known_hosts: str | None, host: str, port: int, key_type: str, blob: bytes) -> None:
    """Return when the key is recorded for the host; raise HostKeyUnknown or HostKeyChanged otherwise."""
    path = known_hosts_path(known_hosts)
    entries = _entries(path, host, port)
    recorded = [key for marker, key in entries if not marker]
    public_key = f"{key_type} {base64.b64encode(blob).decode()}"
    where = host_pattern(host, port)
    if ("@revoked", (key_type, blob)) in entries:
        raise HostKeyRevoked(
            f"the host key {key_type} {fingerprint(blob)} of {where} is REVOKED in {path}: refused. Ask the site "
            "for the server's current key.", host, port, key_type, fingerprint(blob), public_key, str(path))
    if (key_type, blob) in recorded:
        return
    if recorded:
        raise HostKeyChanged(
            f"the host key of {where} has CHANGED: it now sends {key_type} {fingerprint(blob)}, which does not match "
            f"the key recorded in {path}. This may be an attack or a reinstalled server: ask the site, then remove "
            f"the old line for {where} from {path} by hand.",
            host, port, key_type, fingerprint(blob), public_key, str(path))
    ca = any(marker == "@cert-authority" for marker, _ in entries)
    raise HostKeyUnknown(
        f"{where} is not a known host. It sent the {key_type} key {fingerprint(blob)}; compare it with the "
        "fingerprint your site publishes before trusting it."
        + (f" ({path} trusts a certificate authority for this host; this SSH back end does not check host "
           "certificates: the asyncssh and openssh back ends do.)" if ca else ""),
        host, port, key_type, fingerprint(blob), public_key, str(path))


def trust_host_key(known_hosts: str | None, host: str, port: int, public_key: str) -> Path:
    """Record a key the user accepted (after seeing its fingerprint). Creates the file with mode 0600."""
    if not valid_host_name(host):
        raise UsageError(f"the host {host!r} cannot be recorded in known_hosts: it must be a host name or address "
                         "(letters, digits, '.', '-', '_', ':'), not a pattern or several lines")
    key_type, blob = parse_public_key(public_key)
    path = known_hosts_path(known_hosts)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = f"{host_pattern(host, port)} {key_type} {base64.b64encode(blob).decode()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as stream:
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            stream.write("\n")
        stream.write(line)
    return path
