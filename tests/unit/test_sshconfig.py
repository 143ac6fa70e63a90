"""~/.ssh/config resolved as OpenSSH resolves it: our rules (for machines without ssh) against `ssh -G`,
the chain of hops each back end connects through, and options a back end cannot honour refused."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from braas_hpc.core.errors import PresetError
from braas_hpc.core.transport import sshconfig
from braas_hpc.core.transport.base import SSHTarget
from braas_hpc.core.transport.sshconfig_rules import resolve_rules

SSH = shutil.which("ssh")
KEYS = ("hostname", "port", "user", "identityfile", "certificatefile", "proxyjump", "proxycommand",
        "userknownhostsfile")
needs_openssh = pytest.mark.skipif(SSH is None, reason="the OpenSSH client is what the rules are compared with")


@pytest.fixture
def ssh_dir_include() -> Iterator[str]:
    """A directory under ~/.ssh (Include's relative paths start there), removed afterwards."""
    name = f"braas-test-{uuid.uuid4().hex[:8]}"
    path = Path("~/.ssh").expanduser() / name
    path.mkdir(parents=True)
    (path / "10-site.conf").write_text("Host inc-*\n  User from-include\n  Port 2201\n")
    (path / "20-more.conf").write_text("Host inc-b\n  HostName b.cluster.example\n  User ignored-second\n"
                                       "Host *\n  IdentityFile ~/.ssh/inc-key\n")
    (path / "skipped.txt").write_text("Host *\n  User never\n")
    try:
        yield name
    finally:
        shutil.rmtree(path)


CONFIG = """\
# comment line
Include {inc}/*.conf
Host alias1
    HostName real-%h.example.org
    Port=2022
    User alice
    IdentityFile ~/.ssh/id_one
    IdentityFile %d/.ssh/id_two_%r_%h
    CertificateFile ~/.ssh/id_one-cert.pub
Host jumped
    ProxyJump ssh://bob@gate.example:2200,carol@[2001:db8::1]:22,plain
Host jumped2
    ProxyJump gw2
    ProxyCommand never used
Host proxied
    ProxyCommand nc -X connect -x proxy:3128 %h %p # %r
    ProxyJump never-used
Host "quoted" !notme *.neg
    User "quoted user"
Match originalhost m-* user root
    User matched-root
    IdentityFile ~/.ssh/root-match
Match host m-final exec-never final
Match host m-* !user alice
    HostName %h.matched.example
Match final host *.matched.example
    Port 2999
Host gw2
    HostName gateway.example
    UserKnownHostsFile ~/.ssh/known_hosts_gw %d/other
"""

QUERIES = [
    ("alias1", None, None), ("alias1", "zed", 2200), ("jumped", None, None), ("jumped2", None, None),
    ("proxied", None, None), ("quoted", None, None), ("notme", None, None), ("x.neg", None, None),
    ("m-one", None, None), ("m-one", "alice", None), ("m-one", "root", 22), ("inc-a", None, None),
    ("inc-b", None, 2300), ("gw2", None, None), ("Unknown.Host", None, None),
    ("Alias1", None, None), ("M-One", None, None), ("m-one", "ROOT", None),
]


def _config(tmp_path: Path, inc: str) -> str:
    path = tmp_path / "config"
    path.write_text(CONFIG.format(inc=inc).replace("exec-never ", ""))
    return str(path)


def _subset(found: dict[str, list[str]]) -> dict[str, list[str]]:
    return {key: found[key] for key in KEYS if key in found}


@needs_openssh
@pytest.mark.parametrize(("host", "user", "port"), QUERIES)
def test_rules_resolve_as_ssh_g(tmp_path: Path, ssh_dir_include: str, host: str, user: str | None,
                                port: int | None) -> None:
    config = _config(tmp_path, ssh_dir_include)
    assert SSH is not None
    expected = _subset(sshconfig.ask_openssh(SSH, config, host, user, port))
    assert _subset(resolve_rules(config, host, user, port)) == expected


@needs_openssh
def test_the_configs_exercise_every_rule(tmp_path: Path, ssh_dir_include: str) -> None:
    """What OpenSSH itself says for the set, so the comparison above cannot pass on a config that is not read."""
    config = _config(tmp_path, ssh_dir_include)
    assert SSH is not None

    def g(host: str, user: str | None = None, port: int | None = None) -> dict[str, list[str]]:
        return sshconfig.ask_openssh(SSH, config, host, user, port)

    assert g("inc-b")["user"] == ["from-include"] and g("inc-b")["hostname"] == ["b.cluster.example"]
    assert g("inc-a")["port"] == ["2201"] and g("inc-a")["identityfile"] == ["~/.ssh/inc-key"]
    assert g("m-one")["hostname"] == ["m-one.matched.example"] and g("m-one")["port"] == ["2999"]
    assert g("m-one", "alice")["hostname"] == ["m-one"]
    assert g("m-one", "root")["user"] == ["root"]  # -l wins over a Match's User
    assert g("alias1")["identityfile"] == ["~/.ssh/inc-key", "~/.ssh/id_one", "%d/.ssh/id_two_%r_%h"]
    assert "proxycommand" not in g("jumped2") and "proxyjump" not in g("proxied")
    assert g("quoted")["user"] == ["quoted user"] and g("notme")["user"] != ["quoted user"]


@pytest.fixture(params=["ssh -G", "rules"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "ssh -G" and SSH is None:
        pytest.skip("no OpenSSH client")
    monkeypatch.setenv("BRAAS_SSH_G", SSH if request.param == "ssh -G" else "none")
    return str(request.param)


def test_chain_through_every_proxyjump_form(tmp_path: Path, ssh_dir_include: str, resolver: str) -> None:
    chain = sshconfig.resolve(SSHTarget("jumped", ssh_config=_config(tmp_path, ssh_dir_include)))
    assert [(h.hostname, h.port, h.user) for h in chain[:3]] == [
        ("gate.example", 2200, "bob"), ("2001:db8::1", 22, "carol"), ("plain", 22, chain[2].user)]
    assert chain[-1].alias == "jumped" and all(h.proxy_command is None for h in chain)


def test_nested_jump_and_known_hosts(tmp_path: Path, ssh_dir_include: str, resolver: str) -> None:
    chain = sshconfig.resolve(SSHTarget("jumped2", ssh_config=_config(tmp_path, ssh_dir_include)))
    assert [h.hostname for h in chain] == ["gateway.example", "jumped2"]
    assert chain[0].known_hosts == str(Path("~/.ssh/known_hosts_gw").expanduser())
    assert chain[1].proxy_command is None  # ProxyJump came first in its block


def test_proxy_command_tokens_expanded(tmp_path: Path, ssh_dir_include: str, resolver: str) -> None:
    (hop,) = sshconfig.resolve(SSHTarget("proxied", user="u1", port=2022,
                                         ssh_config=_config(tmp_path, ssh_dir_include)))
    assert hop.proxy_command == "nc -X connect -x proxy:3128 proxied 2022 # u1"


def test_identity_and_certificate_files(tmp_path: Path, ssh_dir_include: str, resolver: str) -> None:
    (hop,) = sshconfig.resolve(SSHTarget("alias1", ssh_config=_config(tmp_path, ssh_dir_include)))
    home = str(Path("~").expanduser())
    assert (hop.hostname, hop.port, hop.user) == ("real-alias1.example.org", 2022, "alice")
    assert hop.key_files == (f"{home}/.ssh/inc-key", f"{home}/.ssh/id_one",
                             f"{home}/.ssh/id_two_alice_real-alias1.example.org")
    assert hop.certificate_files == (f"{home}/.ssh/id_one-cert.pub",)


def test_preset_values_win(tmp_path: Path, ssh_dir_include: str, resolver: str) -> None:
    target = SSHTarget("proxied", user="p", port=2, key_files=("/k",), proxy_jump="j1:2200",
                       ssh_config=_config(tmp_path, ssh_dir_include))
    jump, hop = sshconfig.resolve(target)
    assert (jump.hostname, jump.port) == ("j1", 2200)
    assert (hop.user, hop.port, hop.key_files, hop.proxy_command) == ("p", 2, ("/k",), None)


def test_unset_keys_are_left_to_the_defaults(tmp_path: Path, resolver: str) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    (hop,) = sshconfig.resolve(SSHTarget("h", ssh_config=str(empty)))
    assert (hop.key_files, hop.certificate_files, hop.known_hosts, hop.proxy_command) == ((), (), None, None)


@pytest.mark.parametrize("option", ["HostKeyAlias other", "ProxyUseFdpass yes", "PKCS11Provider /usr/lib/p11.so"])
@pytest.mark.parametrize("backend", ["asyncssh", "paramiko"])
def test_unsupported_option_is_refused_by_name(tmp_path: Path, resolver: str, option: str, backend: str) -> None:
    config = tmp_path / "config"
    config.write_text(f"Host h\n  ProxyCommand nc %h %p\n  {option}\n")
    with pytest.raises(PresetError, match=rf"the {backend} back end cannot use {option.split()[0].lower()} "):
        sshconfig.resolve(SSHTarget("h", ssh_config=str(config)), backend)
    assert sshconfig.resolve(SSHTarget("h", ssh_config=str(config)))  # the openssh back end reads it itself


@pytest.mark.parametrize(("spec", "parts"), [
    ("h", ("h", None, None)), ("u@h:2", ("h", "u", 2)), ("ssh://u@h:2", ("h", "u", 2)), ("ssh://h", ("h", None, None)),
    ("u@[::1]:2200", ("::1", "u", 2200)), ("::1", ("::1", None, None)), ("a@b@h", ("h", "a@b", None)),
])
def test_split_jump(spec: str, parts: tuple[str, str | None, int | None]) -> None:
    assert sshconfig.split_jump(spec) == parts


def test_bad_jump_is_refused() -> None:
    with pytest.raises(PresetError, match="ProxyJump entry"):
        sshconfig.split_jump("ssh://u@h:port")


def test_timeout_without_proxy_says_so() -> None:
    hop = sshconfig.Hop("c", "c.example", 22, "u", ())
    assert "no ProxyJump or ProxyCommand applies to c" in sshconfig.no_proxy_hint(hop, None, TimeoutError())
    assert sshconfig.no_proxy_hint(hop, object(), TimeoutError()) == ""
    assert sshconfig.no_proxy_hint(hop, None, ConnectionRefusedError()) == ""


@pytest.mark.parametrize(("line", "named"), [("Match exec \"true\"", "Match exec"),
                                             ("CanonicalizeHostname yes", "CanonicalizeHostname")])
def test_rules_refuse_what_needs_openssh(tmp_path: Path, line: str, named: str) -> None:
    config = tmp_path / "config"
    config.write_text(f"{line}\n  User x\n")
    with pytest.raises(PresetError, match=named):
        resolve_rules(str(config), "h", None, None)


def test_ssh_g_errors_are_reported(tmp_path: Path) -> None:
    if SSH is None:
        pytest.skip("no OpenSSH client")
    config = tmp_path / "config"
    config.write_text("Host h\n  NoSuchOption 1\n")
    with pytest.raises(PresetError, match="(?s)OpenSSH cannot read the ssh config for h: .*line 2: Bad configuration"):
        sshconfig.ask_openssh(SSH, str(config), "h", None, None)
