"""Authentication: key files (decrypted with the user's passphrase), the agent, keyboard-interactive."""

from __future__ import annotations

import contextlib
import struct
import threading
from pathlib import Path

import paramiko

from ...errors import AuthenticationFailed, ConnectionFailed
from ..base import Prompts
from ..sshconfig import Hop
from .client import Client
from .diagnose import why

PASSPHRASE_TRIES = 3
DEFAULT_KEYS = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")  # tried when no key is configured


def _load_key(path: str, prompts: Prompts | None) -> paramiko.PKey | None:
    """A key file with its -cert.pub, decrypted with a passphrase from `prompts` when needed.

    `prompts` None: a default key that is tried only if usable as is (asyncssh skips those too).
    PKey.from_path raises TypeError, not PasswordRequiredException, for an encrypted key without
    a password (cryptography's loader runs first), so both mean "encrypted".
    """
    try:
        return paramiko.PKey.from_path(path)
    except (TypeError, paramiko.PasswordRequiredException):
        pass
    except (OSError, ValueError, paramiko.SSHException, paramiko.UnknownKeyType) as exc:
        if prompts is None:
            return None
        raise ConnectionFailed(f"cannot read the key {path}: {why(exc)}") from exc
    if prompts is None:
        return None
    for _ in range(PASSPHRASE_TRIES):
        passphrase = prompts.passphrase(path)
        if passphrase is None:
            break
        try:
            return paramiko.PKey.from_path(path, password=passphrase.encode())
        except (TypeError, ValueError, paramiko.SSHException):
            continue  # a wrong passphrase: ask again
    raise AuthenticationFailed(f"the key {path} is encrypted and no correct passphrase was given")


def _public_blob(path: str) -> bytes | None:
    """The key blob of an OpenSSH public key or certificate file, None when absent or unreadable."""
    try:
        return paramiko.PublicBlob.from_file(path).key_blob
    except (OSError, ValueError, IndexError):
        return None


def _skip_strings(blob: bytes, count: int) -> bytes:
    for _ in range(count):
        (length,) = struct.unpack(">I", blob[:4])
        blob = blob[4 + length:]
    return blob


def _certifies(cert: bytes, key: bytes) -> bool:
    """A certificate is (type, nonce, the key's public fields, ...); a plain key is (type, fields)."""
    try:
        return _skip_strings(cert, 2).startswith(_skip_strings(key, 1))
    except struct.error:
        return False


def _agent_key_for(path: str, agent_keys: list[paramiko.AgentKey]) -> paramiko.AgentKey | None:
    """The agent's copy of a key file (matched by its .pub or -cert.pub), with the certificate."""
    public = _public_blob(path + ".pub")
    cert = _public_blob(path + "-cert.pub")
    for key in agent_keys:
        blob = key.asbytes()
        if blob == public or (cert is not None and _certifies(cert, blob)):
            if cert is not None:
                with contextlib.suppress(ValueError, OSError):
                    key.load_certificate(path + "-cert.pub")
            return key
    return None


def _attach_certificate(path: str, keys: list[tuple[str, paramiko.PKey]]) -> None:
    """CertificateFile: the certificate goes with the key (file or agent) it certifies, as OpenSSH pairs them.
    A file that is missing or certifies none of the keys is passed over, as OpenSSH does."""
    cert = _public_blob(path)
    if cert is None:
        return
    for _, key in keys:
        if _certifies(cert, key.asbytes()):
            with contextlib.suppress(ValueError, OSError):
                key.load_certificate(path)


def _open_agent() -> tuple[paramiko.Agent | None, list[paramiko.AgentKey]]:
    try:
        agent = paramiko.Agent()  # SSH_AUTH_SOCK; no keys when there is no agent
        return agent, list(agent.get_keys())
    except (paramiko.SSHException, OSError):
        return None, []


class _Declined(EOFError):
    """The user gave no answer to a keyboard-interactive prompt. Raised in paramiko's thread, which
    then ends the connection; an EOFError because paramiko logs any other exception there as an error."""


def _offered(offered: list[str], keys: list[tuple[str, paramiko.PKey]]) -> str:
    if offered:
        return ", ".join(offered)
    return "nothing the server accepts" if keys else "nothing (no key configured or found, no agent key)"


def _methods(transport: paramiko.Transport, user: str) -> list[str]:
    """The methods the server accepts, from a "none" attempt (what OpenSSH does first, too)."""
    try:
        transport.auth_none(user)
    except paramiko.BadAuthenticationType as exc:
        return list(exc.allowed_types)
    except paramiko.AuthenticationException:
        return ["publickey", "keyboard-interactive"]
    return []  # "none" was enough


def _publickey(transport: paramiko.Transport, user: str, keys: list[tuple[str, paramiko.PKey]],
               offered: list[str]) -> list[str]:
    """Offer each key; returns the methods still required after a partial success, else []."""
    for label, key in keys:
        offered.append(label)
        try:
            remaining = transport.auth_publickey(user, key)
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
        except paramiko.AuthenticationException:
            continue
        return list(remaining)  # [] when fully authenticated; e.g. ["keyboard-interactive"] when partial
    return []


class Authenticating(Client):
    """Logs a hop in: the keys to offer, then publickey and keyboard-interactive as the server asks."""

    def _credentials(self, hop: Hop) -> tuple[list[tuple[str, paramiko.PKey]], paramiko.Agent | None]:
        """(label, key) to offer, in order: key files (the agent's copy when it holds one), then the agent."""
        explicit = hop.key_files or self.target.key_files
        files = [str(Path(k).expanduser()) for k in explicit or DEFAULT_KEYS]
        agent, agent_keys = _open_agent() if self.target.use_agent else (None, [])
        found: list[tuple[str, paramiko.PKey]] = []
        for path in files:
            held = _agent_key_for(path, agent_keys)
            if held is not None:  # no passphrase needed: the agent signs
                agent_keys.remove(held)
                found.append((f"{path} (ssh-agent)", held))
            elif (key := self._key(path, bool(explicit))) is not None:
                found.append((path, key))
        found += [(f"ssh-agent key {k.comment or k.get_name()}", k) for k in agent_keys]
        for cert in hop.certificate_files:
            _attach_certificate(cert, found)
        return found, agent

    def _key(self, path: str, explicit: bool) -> paramiko.PKey | None:
        if path not in self._keys:
            if not explicit and not Path(path).exists():
                return None
            key = _load_key(path, self.prompts if explicit else None)
            if key is None:
                return None
            self._keys[path] = key
        return self._keys[path]

    def _authenticate(self, transport: paramiko.Transport, hop: Hop, keys: list[tuple[str, paramiko.PKey]],
                      where: str) -> None:
        transport.auth_timeout = self.target.connect_timeout
        offered: list[str] = []
        try:
            allowed = _methods(transport, hop.user)
            if "publickey" in allowed and not transport.is_authenticated():
                allowed = _publickey(transport, hop.user, keys, offered) or allowed
            if "keyboard-interactive" in allowed and not transport.is_authenticated():
                offered.append("keyboard-interactive")
                self._interactive(transport, hop.user)
        except paramiko.AuthenticationException as exc:
            raise AuthenticationFailed(f"{where} refused the login ({why(exc)}); "
                                       f"offered: {_offered(offered, keys)}") from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectionFailed(f"cannot log in to {where}: {why(exc)}") from exc
        if not transport.is_authenticated():
            raise AuthenticationFailed(f"{where} refused the login (it accepts: {', '.join(allowed) or '-'}); "
                                       f"offered: {_offered(offered, keys)}")

    def _interactive(self, transport: paramiko.Transport, user: str) -> None:
        """Keyboard-interactive (one-time codes): each round of prompts goes to the user's callback."""

        declined = threading.Event()

        def answer(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
            if not prompts:
                return []  # servers send an empty round after the code: answer it without asking
            answers = self.prompts.kbdint(title, instructions, list(prompts))
            if answers is None:
                declined.set()
                raise _Declined()
            return list(answers)

        transport.auth_timeout = None  # a person is typing; sshd's LoginGraceTime still bounds it
        try:
            transport.auth_interactive(user, answer)
        except paramiko.AuthenticationException as exc:
            if declined.is_set():
                raise paramiko.AuthenticationException("no answer to the server's prompt") from exc
            raise
