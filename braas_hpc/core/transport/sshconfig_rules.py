"""OpenSSH's reading of ssh_config, in Python, for machines without the `ssh` client (where `ssh -G`
cannot be asked). The result has the shape of `ssh -G` output: lowercase keys, each with its values.

The rules followed: the first value of a keyword wins (IdentityFile, CertificateFile and the forwards
add up); Host patterns with `!` negation and `*`/`?` globs; Match all/host/originalhost/user/localuser
and canonical/final (a second pass, as OpenSSH makes when a Match final exists); Include with globs,
relative to ~/.ssh (or /etc/ssh in the system file), only where its block applies; `%h` in HostName.
"""

from __future__ import annotations

import fnmatch
import getpass
import glob
import os
import re
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PresetError

MULTI = {"identityfile", "certificatefile", "localforward", "remoteforward", "dynamicforward", "sendenv",
         "setenv", "include"}
MAX_INCLUDE_DEPTH = 16
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
DEFAULT_IDENTITIES = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ecdsa_sk", "~/.ssh/id_ed25519",
                      "~/.ssh/id_ed25519_sk", "~/.ssh/id_xmss", "~/.ssh/id_dsa")


def home() -> str:
    return os.path.expanduser("~")


def expand_tokens(value: str, *, alias: str, hostname: str, port: int, user: str, path: bool) -> str:
    """OpenSSH's %-tokens (and ~ for paths) in IdentityFile, CertificateFile, UserKnownHostsFile, ProxyCommand."""
    local = socket.gethostname()
    tokens = {"%": "%", "h": hostname, "p": str(port), "r": user, "n": alias, "u": getpass.getuser(),
              "l": local.split(".")[0], "L": local.split(".")[0], "d": home(),
              "i": str(os.getuid()) if hasattr(os, "getuid") else "0"}
    out, chars = [], iter(value)
    for char in chars:
        if char != "%":
            out.append(char)
            continue
        token = next(chars, "")
        if token not in tokens:
            raise PresetError(f"ssh config: the token %{token} in {value!r} is not supported here")
        out.append(tokens[token])
    text = "".join(out)
    return os.path.expanduser(text) if path else text


def patterns_match(value: str, patterns: str, fold: bool = False) -> bool:
    """OpenSSH's pattern list: any positive pattern matches and no negated one does. Case counts, except
    for `Match host` (`fold`), as in OpenSSH."""
    hit = False
    for pattern in patterns.split(","):
        pattern = pattern.strip()
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        if fnmatch.fnmatchcase(value.lower() if fold else value, pattern.lower() if fold else pattern):
            if negated:
                return False
            hit = True
    return hit


@dataclass
class _State:
    host: str  # what Host patterns compare with: as given, then in the final pass the resolved host name
    original: str  # as given: Match originalhost, %h in HostName
    user: str | None
    port: int | None
    final_pass: bool = False
    found: dict[str, list[str]] = field(default_factory=dict)
    wants_final: bool = False

    def set(self, key: str, values: list[str]) -> None:
        if key in ("proxyjump", "proxycommand") and ("proxyjump" in self.found or "proxycommand" in self.found):
            return  # OpenSSH: whichever of the two comes first is the one used
        if key in ("identityfile", "certificatefile"):  # OpenSSH adds a file once
            known = self.found.setdefault(key, [])
            known.extend(v for v in values if v not in known)
        elif key in MULTI:
            self.found.setdefault(key, []).extend(values)
        elif key not in self.found:
            self.found[key] = values

    def hostname(self) -> str:
        name = self.found.get("hostname", [self.host])[0]
        return name.replace("%h", self.original).replace("%%", "%").lower()


_LINE = re.compile(r"^([^\s=]+)\s*(?:=\s*|\s)\s*(.*)$")
RAW = {"proxycommand", "localcommand", "remotecommand", "knownhostscommand"}  # kept as one string


def _split(line: str) -> tuple[str, list[str]] | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    found = _LINE.match(line)
    if found is None:
        raise PresetError(f"ssh config: the line {line!r} has a keyword and no value")
    key, rest = found.group(1).lower(), found.group(2).strip()
    if key in RAW:
        return key, [rest]
    try:
        lexer = shlex.shlex(rest, posix=True)
        lexer.whitespace_split, lexer.commenters = True, ""
        words = list(lexer)
    except ValueError as exc:
        raise PresetError(f"ssh config: cannot read the line {line!r}: {exc}") from exc
    comment = next((i for i, w in enumerate(words) if w.startswith("#")), len(words))
    return key, words[:comment]


def _match(state: _State, args: list[str], where: str) -> bool:
    """A Match line: every criterion must hold. `exec` would need a shell we do not run ourselves."""
    result = True
    words = list(args)
    while words:
        word = words.pop(0).lower()
        negate = word.startswith("!")
        word = word.removeprefix("!")
        if word == "all":
            hit = True
        elif word in ("canonical", "final"):
            state.wants_final = state.wants_final or word == "final"
            hit = state.final_pass
        else:
            if not words:
                raise PresetError(f"ssh config {where}: 'Match {word}' needs an argument")
            arg = words.pop(0)
            subjects: dict[str, Callable[[], str]] = {
                "host": state.hostname, "originalhost": lambda: state.original,
                "user": lambda: state.user or state.found.get("user", [getpass.getuser()])[0],
                "localuser": getpass.getuser,
            }
            if word not in subjects:
                raise PresetError(f"ssh config {where}: 'Match {word}' is not supported without OpenSSH installed "
                                  "(install the OpenSSH client so `ssh -G` can resolve it)")
            hit = patterns_match(subjects[word](), arg, fold=word in ("host", "originalhost"))
        result = result and (hit != negate)
    return result


def _read(state: _State, path: Path, depth: int, system: bool) -> None:
    if depth > MAX_INCLUDE_DEPTH:
        raise PresetError(f"ssh config: Include nested deeper than {MAX_INCLUDE_DEPTH} at {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PresetError(f"cannot read the ssh config {path}: {exc.strerror or exc}") from exc
    active = True
    for number, line in enumerate(lines, 1):
        parsed = _split(line)
        if parsed is None:
            continue
        key, values = parsed
        where = f"{path}:{number}"
        if key == "host":
            active = any(patterns_match(state.host, v) for v in values if not v.startswith("!")) and not any(
                patterns_match(state.host, v.removeprefix("!")) for v in values if v.startswith("!"))
        elif key == "match":
            active = _match(state, values, where)
        elif not active:
            continue
        elif key == "include":
            for pattern in values:
                base = "/etc/ssh" if system else os.path.join(home(), ".ssh")
                full = os.path.join(base, os.path.expanduser(pattern))
                for found in sorted(glob.glob(full)):
                    _read(state, Path(found), depth + 1, system)
        else:
            state.set(key, values)


def resolve_rules(config: str | None, host: str, user: str | None, port: int | None) -> dict[str, list[str]]:
    """What `ssh -G [-F config] [-l user] [-p port] host` would print, for the keys we use."""
    files = [(Path(config), False)] if config else [
        (Path(home(), ".ssh", "config"), False), (Path(SYSTEM_CONFIG), True)]
    if config == "none":
        files = []
    state = _State(host=host, original=host, user=user, port=port)
    for path, system in files:
        if path.is_file() or config:
            _read(state, path, 0, system)
    if state.wants_final:
        # OpenSSH's second pass keeps what the first found; Host now compares with the resolved name.
        state.found["hostname"] = [state.hostname()]
        state.host, state.final_pass = state.found["hostname"][0], True
        for path, system in files:
            if path.is_file() or config:
                _read(state, path, 0, system)
    found = {k: v for k, v in state.found.items() if k not in ("include",)}
    if found.get("canonicalizehostname", ["no"])[0].lower() in ("yes", "always"):
        raise PresetError(f"ssh config: CanonicalizeHostname for {host} needs the OpenSSH client installed "
                          "(`ssh -G` resolves it)")
    # Command line first, then the file, then OpenSSH's defaults.
    found["user"] = [user or found.get("user", [getpass.getuser()])[0]]
    found["port"] = [str(port or found.get("port", ["22"])[0])]
    found["hostname"] = [state.hostname()]
    found.setdefault("identityfile", list(DEFAULT_IDENTITIES))
    # ssh -G prints UserKnownHostsFile expanded (the other paths as written).
    known = found.get("userknownhostsfile", ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"])
    found["userknownhostsfile"] = [
        expand_tokens(v, alias=host, hostname=found["hostname"][0], port=int(found["port"][0]),
                      user=found["user"][0], path=True) for v in known]
    jump, command = found.get("proxyjump"), found.get("proxycommand")
    if jump is not None and [v.lower() for v in jump] == ["none"]:
        found.pop("proxyjump")
    if command is not None and [v.lower() for v in command] == ["none"]:
        found.pop("proxycommand")
    return found
