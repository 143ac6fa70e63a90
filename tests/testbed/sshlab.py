"""SSH servers for the transport contract suite, started by `testbed.up()` next to the main sshd.

- more client keys for the cluster user (ecdsa, rsa 3072, passphrase-protected ed25519, and one
  that lives in an ssh-agent), authorized on every sshd;
- an ssh-agent on `<base>/agent/agent.sock`;
- a TOTP sshd on 127.0.0.1:2223: publickey, then keyboard-interactive one-time codes through PAM
  (pam_oath);
- a login host in the network namespace `braas-login` (veth 198.18.0.1 <-> 198.18.0.2): a jump sshd
  on 198.18.0.2:22 and, reachable only from inside, an inner sshd on 127.0.0.1:2200 and an echo
  server on 127.0.0.1:7777;
- `<base>/client/known_hosts` pinning every host key, and `<base>/client/ssh_config` with aliases.

Daemons are recorded in the testbed's `state.json` under their process names (`/proc/PID/comm`),
which is why each sshd runs through its own symlink and the echo server is a script with a shebang.
Only stdlib at import time, like testbed.py.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import os
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__:
    from . import testbed as tb
else:  # imported as plain `sshlab`, beside plain `testbed` (the command-line script)
    import testbed as tb

APT_PACKAGES = ("libpam-oath", "oathtool", "iproute2")

# A test secret, not a real one: the suite needs to know it.
KEY_PASSPHRASE = "braas test passphrase 7"

TOTP_PORT = 2223
TOTP_WINDOW = 20  # pam_oath accepts codes up to this many 30-s steps (10 min) before or after the server's time:
# a site accepts one or two, but each login of a test needs a step of its own (replay protection), so a
# narrow window made the suite wait for the clock
TOTP_STEP = 30
PAM_SERVICE = "sshd-totp"
PAM_FILE = Path("/etc/pam.d") / PAM_SERVICE

NETNS = "braas-login"
NETNS_PATH = Path("/run/netns") / NETNS
VETH_ROOT = "braas-veth0"
VETH_NS = "braas-veth1"
# 198.18.0.0/15 is reserved for benchmarking (RFC 2544): never routed, so it cannot clash.
ROOT_ADDR = "198.18.0.1"
NS_ADDR = "198.18.0.2"
PREFIX_LEN = 30
JUMP_PORT = 22
INNER_HOST = "127.0.0.1"
INNER_PORT = 2200
ECHO_PORT = 7777
JUMP_HOSTNAME = "braas-login"
INNER_HOSTNAME = "braas-inner"

# Start order; down() walks it backwards. Each name is also the process name.
LAB_DAEMONS = ("ssh-agent", "sshd-totp", "sshd-jump", "sshd-inner", "braas-echo")
# Each lab sshd: (host key type, extra ssh-keygen args). Different types per server, so clients
# are exercised with ed25519, ecdsa and rsa host keys pinned in known_hosts.
HOST_KEYS = {"sshd-totp": ("ed25519", ()), "sshd-jump": ("ecdsa", ()), "sshd-inner": ("rsa", ("-b", "3072"))}
# name -> (type, extra ssh-keygen args, passphrase)
CLIENT_KEYS = {
    "id_ecdsa": ("ecdsa", (), ""),
    "id_rsa": ("rsa", ("-b", "3072"), ""),
    "id_ed25519_enc": ("ed25519", (), KEY_PASSPHRASE),
    "id_agent": ("ed25519", (), ""),
}


@dataclass(frozen=True)
class SSHLab:
    """Everything a transport test needs to reach the lab servers (see the module docstring)."""

    __test__ = False

    user: str
    client_dir: Path
    ssh_config: Path  # aliases tb-main, tb-totp, tb-jump, tb-inner
    known_hosts: Path  # pins main, totp, jump and inner host keys, plain lines
    key_ed25519: Path  # the main testbed key, no passphrase
    key_ecdsa: Path
    key_rsa: Path
    key_ed25519_enc: Path  # encrypted with key_passphrase
    key_passphrase: str
    agent_socket: Path  # SSH_AUTH_SOCK; holds the private half of agent_public_key
    agent_public_key: Path  # id_agent.pub; tests never read the private key file
    main_host: str
    main_port: int
    totp_host: str
    totp_port: int
    totp_secret_base32: str
    totp_users_file: Path  # pam_oath's state (root only): the last accepted code
    netns: str
    jump_host: str
    jump_port: int
    jump_hostname: str  # what `hostname` prints in a session on the jump host
    inner_host: str  # as seen from inside the namespace
    inner_port: int
    inner_hostname: str
    echo_port: int  # 127.0.0.1 inside the namespace
    echo_token: str  # the echo server greets with f"braas-echo {echo_token}\n"
    logs: dict[str, Path]  # "main", "totp", "jump", "inner": sshd logs; "agent", "echo": consoles

    def totp_at(self, timestamp: float) -> str:
        """The 6-digit code for a time (RFC 6238, SHA-1, 30 s; the same as pyotp's `at`)."""
        return _totp(base64.b32decode(self.totp_secret_base32), int(timestamp) // TOTP_STEP)

    def fresh_totp_time(self) -> float:
        """A time whose code the TOTP sshd will accept now, and that no other caller is given.

        pam_oath refuses a code whose 30-s step is not later than the last accepted one (replay
        protection), so a second login within the same 30 s must use a later step; codes up to
        TOTP_WINDOW steps ahead are accepted. Waits when the window is used up. Reads the users
        file, so root only. Two test processes log in at once (the suite's two lanes): each step is
        handed out once, under a lock, and recorded beside the users file.
        """
        reserved = self.totp_users_file.with_name("handed-out-step")
        secret = base64.b32decode(self.totp_secret_base32)
        while True:
            with open(reserved.with_suffix(".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                now = int(time.time()) // TOTP_STEP
                last = _last_accepted_step(self.totp_users_file, secret, now)
                given = int(reserved.read_text() or 0) if reserved.exists() else 0
                step = max(now, (last if last is not None else now - 1) + 1, given + 1)
                if step <= now + TOTP_WINDOW:  # the server checks later than `now`, never earlier
                    reserved.write_text(str(step))
                    return float(step * TOTP_STEP)
            time.sleep(1.0)

    def fresh_totp(self) -> str:
        return self.totp_at(self.fresh_totp_time())


def _totp(secret: bytes, step: int, digits: int = 6) -> str:
    mac = hmac.new(secret, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    number = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(number % 10**digits).zfill(digits)


def _last_accepted_step(users_file: Path, secret: bytes, now: int) -> int | None:
    # pam_oath appends "<counter> <last otp> <timestamp>" to the user's line after a login.
    try:
        fields = users_file.read_text().split()
    except OSError:
        return None
    if len(fields) < 6:
        return None
    last_otp = fields[5]
    steps = [s for s in range(now - TOTP_WINDOW - 2, now + TOTP_WINDOW + 3) if _totp(secret, s) == last_otp]
    return max(steps) if steps else None


# --------------------------------------------------------------------------------------------
# paths


@dataclass(frozen=True)
class LabPaths:
    base: Path

    @property
    def lab(self) -> Path:
        return self.base / "lab"

    @property
    def bin(self) -> Path:
        return self.lab / "bin"

    @property
    def agent_dir(self) -> Path:
        return self.base / "agent"

    @property
    def agent_socket(self) -> Path:
        return self.agent_dir / "agent.sock"

    @property
    def totp_dir(self) -> Path:
        return self.base / "totp"

    @property
    def users_file(self) -> Path:
        return self.totp_dir / "users.oath"

    @property
    def echo_token(self) -> Path:
        return self.dir("braas-echo") / "token"

    def dir(self, daemon: str) -> Path:
        return self.agent_dir if daemon == "ssh-agent" else self.lab / daemon

    def program(self, daemon: str) -> Path:
        """The symlink/script a daemon runs as: its basename is the process name."""
        return self.bin / daemon

    def log(self, daemon: str) -> Path:
        return self.dir(daemon) / f"{daemon}.log"

    def console(self, daemon: str) -> Path:
        return self.dir(daemon) / f"{daemon}.console.log"

    def config(self, daemon: str) -> Path:
        return self.dir(daemon) / "sshd_config"

    def pid_file(self, daemon: str) -> Path:
        return self.dir(daemon) / f"{daemon}.pid"

    def host_key(self, daemon: str) -> Path:
        return self.dir(daemon) / f"ssh_host_{HOST_KEYS[daemon][0]}_key"


def _paths(layout: tb.Layout) -> LabPaths:
    return LabPaths(layout.base)


# --------------------------------------------------------------------------------------------
# processes (state.json entries shared with testbed.py)


def _spawn(paths: LabPaths, daemon: str, cmd: list[str], env: dict[str, str] | None = None) -> int:
    return tb.spawn_daemon(paths.console(daemon), cmd, env)


def _record(layout: tb.Layout, daemon: str, pid: int) -> None:
    state = tb._load_state(layout)
    state[daemon] = {"pid": pid, "log": str(_paths(layout).log(daemon)), "owned": True}
    tb._save_state(layout, state)


def _lab_error(paths: LabPaths, daemon: str, what: str) -> tb.TestbedError:
    parts = [f"{daemon}: {what}"]
    for path in (paths.log(daemon), paths.console(daemon)):
        if path.exists() and path.stat().st_size:
            parts += [f"--- last lines of {path} ---", tb._tail(path)]
    return tb.TestbedError("\n".join(parts))


def _wait_started(paths: LabPaths, daemon: str, pid: int, ready: Callable[[], bool], what: str) -> None:
    """Wait for `ready()`; fail early (with the logs) when the process died."""

    def check() -> bool:
        if tb._proc_comm(pid) is None:
            raise _lab_error(paths, daemon, f"exited while starting (pid {pid})")
        return ready()

    if not tb._wait_for(check, tb.START_TIMEOUT, 0.1):
        raise _lab_error(paths, daemon, what)


def _banner(host: str, port: int, prefix: bytes = b"SSH-2.0") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.settimeout(2)
            return sock.recv(64).startswith(prefix)
    except OSError:
        return False


# Runs inside the namespace: a socket opened from the root namespace could not reach 127.0.0.1 there.
_NS_PROBE = """\
import socket, sys, time
host, port, prefix, deadline = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), time.time() + float(sys.argv[4])
while time.time() < deadline:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.settimeout(2)
            if s.recv(64).startswith(prefix):
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
"""


def _ns_banner(host: str, port: int, prefix: str, timeout: float) -> bool:
    cmd = ["nsenter", f"--net={NETNS_PATH}", tb.SYSTEM_PYTHON, "-c", _NS_PROBE, host, str(port), prefix, str(timeout)]
    return tb._run(cmd, check=False, timeout=timeout + 10).returncode == 0


def _ns_port_taken(port: int) -> bool:
    proc = tb._run(["nsenter", f"--net={NETNS_PATH}", "ss", "-ltnH", f"sport = :{port}"], check=False, timeout=10)
    return bool(proc.stdout.strip())


# --------------------------------------------------------------------------------------------
# packages, keys, client files


def _install_packages() -> None:
    missing = []
    for pkg in APT_PACKAGES:
        proc = tb._run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False)
        if proc.returncode != 0 or "install ok installed" not in proc.stdout:
            missing.append(pkg)
    if not missing:
        return
    tb._say(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    tb._run(["apt-get", "update"], env=env, timeout=600)
    tb._run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env, timeout=1800)


def _keygen(path: Path, kind: str, extra: tuple[str, ...], passphrase: str, comment: str) -> None:
    if not (path.exists() and path.with_suffix(".pub").exists()):
        path.unlink(missing_ok=True)  # a half-written pair: ssh-keygen would ask before overwriting
        tb._run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", passphrase, "-C", comment, "-f", str(path)])
    os.chmod(path, 0o600)


def ensure_client_keys(layout: tb.Layout) -> None:
    for name, (kind, extra, passphrase) in CLIENT_KEYS.items():
        _keygen(layout.client / name, kind, extra, passphrase, f"braas-testbed-{name}")
    # The main sshd and all lab sshds read the same ~/.ssh/authorized_keys.
    auth = layout.home / ".ssh" / "authorized_keys"
    existing = auth.read_text().splitlines() if auth.exists() else []
    wanted = [(layout.client / f"{name}.pub").read_text().strip() for name in CLIENT_KEYS]
    missing = [line for line in wanted if line not in existing]
    if missing:
        tb._write(auth, "\n".join([*existing, *missing]) + "\n", 0o600)
    tb._chown(auth, layout.user)


def ensure_host_keys(paths: LabPaths) -> None:
    for daemon, (kind, extra) in HOST_KEYS.items():
        paths.dir(daemon).mkdir(parents=True, exist_ok=True)
        _keygen(paths.host_key(daemon), kind, extra, "", f"braas-testbed-{daemon}")


def _host_pin(pattern: str, pub_file: Path) -> str:
    kind, blob = pub_file.read_text().split()[:2]
    return f"{pattern} {kind} {blob}"


def write_known_hosts(layout: tb.Layout, paths: LabPaths) -> None:
    """Add the lab's pins to the file that testbed.ensure_keys wrote for the main sshd."""
    pins = {
        f"[127.0.0.1]:{TOTP_PORT}": paths.host_key("sshd-totp"),
        NS_ADDR if JUMP_PORT == 22 else f"[{NS_ADDR}]:{JUMP_PORT}": paths.host_key("sshd-jump"),
        f"[{INNER_HOST}]:{INNER_PORT}": paths.host_key("sshd-inner"),
    }
    current = layout.known_hosts.read_text().splitlines() if layout.known_hosts.exists() else []
    kept = [line for line in current if line.split(" ", 1)[0] not in pins]
    lines = kept + [_host_pin(pattern, key.with_suffix(".pub")) for pattern, key in pins.items()]
    tb._write(layout.known_hosts, "\n".join(lines) + "\n")


def ssh_config_text(layout: tb.Layout) -> str:
    return f"""\
# braas-hpc testbed client config, generated by tests/testbed/sshlab.py
# Use: ssh -F {layout.client / "ssh_config"} tb-main|tb-totp|tb-jump|tb-inner
Host tb-main
    HostName 127.0.0.1
    Port {layout.ssh_port}

Host tb-totp
    HostName 127.0.0.1
    Port {TOTP_PORT}

Host tb-jump
    HostName {NS_ADDR}
    Port {JUMP_PORT}

# 127.0.0.1 of the login host's namespace: reachable only through tb-jump.
Host tb-inner
    HostName {INNER_HOST}
    Port {INNER_PORT}
    ProxyJump tb-jump

Host tb-*
    User {layout.user}
    IdentityFile {layout.key_file}
    IdentitiesOnly yes
    UserKnownHostsFile {layout.known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no
    ConnectTimeout 10
"""


# --------------------------------------------------------------------------------------------
# ssh-agent


def _agent_env(paths: LabPaths) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SSH_ASKPASS", "DISPLAY", "SSH_ASKPASS_REQUIRE")}
    return {**env, "SSH_AUTH_SOCK": str(paths.agent_socket)}


def _agent_listing(paths: LabPaths) -> subprocess.CompletedProcess[str]:
    return tb._run(["ssh-add", "-l"], check=False, env=_agent_env(paths), timeout=10)


def _fingerprint(pub: Path) -> str:
    return tb._run(["ssh-keygen", "-l", "-f", str(pub)]).stdout.split()[1]


def start_agent(layout: tb.Layout, paths: LabPaths) -> None:
    daemon = "ssh-agent"
    paths.agent_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.agent_dir, 0o700)
    if not tb._recorded_running(layout, daemon):
        paths.agent_socket.unlink(missing_ok=True)  # left by a crash: the agent would refuse to bind
        # -D: stay in the foreground, so the pid we record is the agent's.
        pid = _spawn(paths, daemon, ["ssh-agent", "-D", "-a", str(paths.agent_socket)])
        _record(layout, daemon, pid)
        # ssh-add -l: 0 = keys listed, 1 = agent answers but holds none, 2 = no agent.
        _wait_started(paths, daemon, pid, lambda: _agent_listing(paths).returncode in (0, 1), "no answer on socket")
    key = layout.client / "id_agent"
    if _fingerprint(key.with_suffix(".pub")) not in _agent_listing(paths).stdout:
        tb._run(["ssh-add", "-q", str(key)], env=_agent_env(paths), timeout=20)


# --------------------------------------------------------------------------------------------
# sshd configurations


def _common_sshd(layout: tb.Layout, paths: LabPaths, daemon: str) -> str:
    return f"""\
HostKey {paths.host_key(daemon)}
PidFile {paths.pid_file(daemon)}
LogLevel VERBOSE
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PermitRootLogin no
AllowUsers {layout.user}
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
# Tests open many connections at once; the default (10:30:100) drops some at random.
MaxStartups 100:30:200
MaxSessions 100
# $SSH_USER_AUTH in a session names the methods and keys used: tests check them.
ExposeAuthInfo yes
SetEnv SLURM_CONF={layout.slurm_conf} PATH={layout.session_path}
"""


def _sshd_config(layout: tb.Layout, paths: LabPaths, daemon: str) -> str:
    head = f"# braas-hpc testbed {daemon}, generated by tests/testbed/sshlab.py\n"
    if daemon == "sshd-totp":
        listen = f"""\
ListenAddress 127.0.0.1
Port {TOTP_PORT}
# PAM service = the program's name, so /etc/pam.d/{PAM_SERVICE} (pam_oath) applies.
UsePAM yes
KbdInteractiveAuthentication yes
PasswordAuthentication no
AuthenticationMethods publickey,keyboard-interactive:pam
"""
    else:
        host, port = (NS_ADDR, JUMP_PORT) if daemon == "sshd-jump" else (INNER_HOST, INNER_PORT)
        listen = f"""\
ListenAddress {host}
Port {port}
UsePAM no
KbdInteractiveAuthentication no
PasswordAuthentication no
AuthenticationMethods publickey
"""
    return head + listen + _common_sshd(layout, paths, daemon)


def _prepare_sshd(layout: tb.Layout, paths: LabPaths, daemon: str) -> Path:
    """Write the config and the symlink (whose name becomes argv[0], comm and PAM service)."""
    config = paths.config(daemon)
    tb._write(config, _sshd_config(layout, paths, daemon))
    link = paths.program(daemon)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink() or os.readlink(link) != "/usr/sbin/sshd":
        link.unlink(missing_ok=True)
        link.symlink_to("/usr/sbin/sshd")
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation dir
    return config


def _sshd_cmd(paths: LabPaths, daemon: str) -> list[str]:
    # sshd re-executes itself for each connection and needs an absolute argv[0] for that.
    return [str(paths.program(daemon)), "-D", "-f", str(paths.config(daemon)), "-E", str(paths.log(daemon))]


def _check_config(paths: LabPaths, daemon: str) -> None:
    proc = tb._run([str(paths.program(daemon)), "-t", "-f", str(paths.config(daemon))], check=False)
    if proc.returncode != 0:
        raise _lab_error(paths, daemon, f"sshd -t rejected {paths.config(daemon)}:\n{proc.stdout}{proc.stderr}")


# --------------------------------------------------------------------------------------------
# TOTP sshd


def _totp_secret_hex(layout: tb.Layout, paths: LabPaths) -> str:
    """The user's secret; created once. pam_oath rewrites the file after each login, keep it."""
    paths.totp_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.totp_dir, 0o700)  # pam_oath replaces the file with one of default mode
    fields = paths.users_file.read_text().split() if paths.users_file.exists() else []
    if len(fields) >= 4 and fields[0] == "HOTP/T30/6" and fields[1] == layout.user:
        secret = fields[3]
    else:
        secret = secrets.token_hex(20)
        tb._write(paths.users_file, f"HOTP/T30/6 {layout.user} - {secret}\n", 0o600)
    os.chmod(paths.users_file, 0o600)
    os.chown(paths.users_file, 0, 0)
    return secret


def _pam_text(paths: LabPaths) -> str:
    return (
        "# braas-hpc testbed: TOTP for the sshd-totp server; removed by `testbed down`\n"
        f"auth required pam_oath.so usersfile={paths.users_file} window={TOTP_WINDOW} digits=6\n"
        "account required pam_unix.so\n"
        "session required pam_permit.so\n"
    )


def start_totp_sshd(layout: tb.Layout, paths: LabPaths) -> str:
    daemon = "sshd-totp"
    secret = _totp_secret_hex(layout, paths)
    tb._write(PAM_FILE, _pam_text(paths))  # the one file the testbed writes under /etc
    _prepare_sshd(layout, paths, daemon)
    if not tb._recorded_running(layout, daemon):
        _check_config(paths, daemon)
        tb._require_free_port(layout, daemon, TOTP_PORT)
        pid = _spawn(paths, daemon, _sshd_cmd(paths, daemon))
        _record(layout, daemon, pid)
        _wait_started(paths, daemon, pid, lambda: _banner("127.0.0.1", TOTP_PORT), f"no banner on :{TOTP_PORT}")
    return base64.b32encode(bytes.fromhex(secret)).decode()


# --------------------------------------------------------------------------------------------
# the login host's network namespace


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return tb._run(["ip", *args], check=check, timeout=20)


def _link_exists(name: str, netns: str | None = None) -> bool:
    ns = ["-n", netns] if netns else []
    return _ip(*ns, "link", "show", "dev", name, check=False).returncode == 0


def ensure_veth_netns(netns: str, veth_root: str, veth_ns: str, root_addr: str, ns_addr: str, prefix: int) -> None:
    """A namespace joined to the root one by a veth pair with an address at each end. Every step is
    idempotent, so a half-built one is repaired (the login host's and the compute node's share this)."""
    if not (Path("/run/netns") / netns).exists():
        _ip("netns", "add", netns)
    if _link_exists(veth_root) and not _link_exists(veth_ns, netns):
        _ip("link", "del", veth_root)  # its peer is elsewhere (a namespace from an earlier crash)
    if not _link_exists(veth_root):
        _ip("link", "add", veth_root, "type", "veth", "peer", "name", veth_ns, "netns", netns)
    _ip("addr", "replace", f"{root_addr}/{prefix}", "dev", veth_root)
    _ip("-n", netns, "addr", "replace", f"{ns_addr}/{prefix}", "dev", veth_ns)
    _ip("link", "set", veth_root, "up")
    _ip("-n", netns, "link", "set", veth_ns, "up")
    _ip("-n", netns, "link", "set", "lo", "up")


def ensure_netns() -> None:
    ensure_veth_netns(NETNS, VETH_ROOT, VETH_NS, ROOT_ADDR, NS_ADDR, PREFIX_LEN)


def _in_netns(hostname: str, cmd: list[str]) -> list[str]:
    """Run `cmd` in the namespace with its own host name; nsenter/unshare/sh all exec, so the
    spawned pid ends up being the daemon's."""
    return [
        "nsenter",
        f"--net={NETNS_PATH}",
        "unshare",
        "--uts",
        "sh",
        "-c",
        'hostname "$0" && exec "$@"',
        hostname,
        *cmd,
    ]


def _same_netns(pid: int) -> bool:
    try:
        mine, lab = os.stat(f"/proc/{pid}/ns/net"), os.stat(NETNS_PATH)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (lab.st_dev, lab.st_ino)


def _running_in_netns(layout: tb.Layout, daemon: str) -> bool:
    """Recorded and running in *this* namespace. One left in an orphaned namespace (someone ran
    `ip netns del` under it) is unreachable: stop it, so that it is started again."""
    pid = tb._recorded_running(layout, daemon)
    if pid is None:
        return False
    if _same_netns(pid):
        return True
    tb._say(f"{daemon} (pid {pid}) runs in a stale namespace; restarting it")
    tb._stop_pid(pid, daemon)
    return False


def _require_free_ns_port(paths: LabPaths, daemon: str, port: int) -> None:
    if _ns_port_taken(port):
        raise _lab_error(
            paths,
            daemon,
            f"port {port} in namespace {NETNS} is taken by a process this testbed did not record "
            f"(see `ip netns pids {NETNS}`); stop it or run `testbed down` first",
        )


def _spawn_ns_sshd(layout: tb.Layout, paths: LabPaths, daemon: str, hostname: str, port: int) -> int | None:
    """Start one of the namespace's sshds unless it already runs; the new pid, or None when it ran."""
    _prepare_sshd(layout, paths, daemon)
    if _running_in_netns(layout, daemon):
        return None
    _check_config(paths, daemon)
    _require_free_ns_port(paths, daemon, port)
    pid = _spawn(paths, daemon, _in_netns(hostname, _sshd_cmd(paths, daemon)))
    _record(layout, daemon, pid)
    return pid


def start_jump_sshd(layout: tb.Layout, paths: LabPaths) -> None:
    daemon = "sshd-jump"
    pid = _spawn_ns_sshd(layout, paths, daemon, JUMP_HOSTNAME, JUMP_PORT)
    if pid is not None:
        _wait_started(paths, daemon, pid, lambda: _banner(NS_ADDR, JUMP_PORT),
                      f"no banner on {NS_ADDR}:{JUMP_PORT}")


def start_inner_sshd(layout: tb.Layout, paths: LabPaths) -> None:
    daemon = "sshd-inner"
    pid = _spawn_ns_sshd(layout, paths, daemon, INNER_HOSTNAME, INNER_PORT)
    if pid is None:
        return
    _wait_started(paths, daemon, pid, lambda: True, "exited at once")
    if not _ns_banner(INNER_HOST, INNER_PORT, "SSH-2.0", tb.START_TIMEOUT):
        raise _lab_error(paths, daemon, f"no banner on {INNER_HOST}:{INNER_PORT} inside {NETNS}")


def _echo_server_text() -> str:
    return f"""\
#!{tb.SYSTEM_PYTHON}
# braas-hpc testbed echo server, generated by tests/testbed/sshlab.py.
# Greets with "braas-echo TOKEN\\n", then echoes everything back. Usage: braas-echo HOST PORT TOKEN
import socketserver
import sys


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(f"braas-echo {{sys.argv[3]}}\\n".encode())
        while data := self.request.recv(65536):
            self.request.sendall(data)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


with Server((sys.argv[1], int(sys.argv[2])), Echo) as server:
    print(f"listening on {{sys.argv[1]}}:{{sys.argv[2]}}", flush=True)
    server.serve_forever()
"""


def start_echo(layout: tb.Layout, paths: LabPaths) -> str:
    daemon = "braas-echo"
    paths.dir(daemon).mkdir(parents=True, exist_ok=True)
    # Run as a script: the kernel then names the process after the file, not "python3.11".
    tb._write(paths.program(daemon), _echo_server_text(), 0o755)
    if _running_in_netns(layout, daemon) and paths.echo_token.exists():
        return paths.echo_token.read_text().strip()
    _require_free_ns_port(paths, daemon, ECHO_PORT)
    token = secrets.token_hex(8)  # new server, new token: a test sees which server answered
    tb._write(paths.echo_token, token + "\n")
    cmd = _in_netns(JUMP_HOSTNAME, [str(paths.program(daemon)), "127.0.0.1", str(ECHO_PORT), token])
    pid = _spawn(paths, daemon, cmd)
    _record(layout, daemon, pid)
    _wait_started(paths, daemon, pid, lambda: True, "exited at once")
    if not _ns_banner("127.0.0.1", ECHO_PORT, f"braas-echo {token}", tb.START_TIMEOUT):
        raise _lab_error(paths, daemon, f"no greeting on 127.0.0.1:{ECHO_PORT} inside {NETNS}")
    return token


# --------------------------------------------------------------------------------------------
# public API (called from testbed.up/down/status)


def up(layout: tb.Layout) -> SSHLab:
    """Build and start the lab; re-uses what runs. Needs the user and the main key (testbed.up)."""
    paths = _paths(layout)
    _install_packages()
    for d in (paths.lab, paths.bin):
        d.mkdir(parents=True, exist_ok=True)
    ensure_client_keys(layout)
    ensure_host_keys(paths)
    write_known_hosts(layout, paths)
    ssh_config = layout.client / "ssh_config"
    tb._write(ssh_config, ssh_config_text(layout), 0o644)

    start_agent(layout, paths)
    totp_secret = start_totp_sshd(layout, paths)
    ensure_netns()
    start_jump_sshd(layout, paths)
    start_inner_sshd(layout, paths)
    token = start_echo(layout, paths)

    return SSHLab(
        user=layout.user,
        client_dir=layout.client,
        ssh_config=ssh_config,
        known_hosts=layout.known_hosts,
        key_ed25519=layout.key_file,
        key_ecdsa=layout.client / "id_ecdsa",
        key_rsa=layout.client / "id_rsa",
        key_ed25519_enc=layout.client / "id_ed25519_enc",
        key_passphrase=KEY_PASSPHRASE,
        agent_socket=paths.agent_socket,
        agent_public_key=layout.client / "id_agent.pub",
        main_host="127.0.0.1",
        main_port=layout.ssh_port,
        totp_host="127.0.0.1",
        totp_port=TOTP_PORT,
        totp_secret_base32=totp_secret,
        totp_users_file=paths.users_file,
        netns=NETNS,
        jump_host=NS_ADDR,
        jump_port=JUMP_PORT,
        jump_hostname=JUMP_HOSTNAME,
        inner_host=INNER_HOST,
        inner_port=INNER_PORT,
        inner_hostname=INNER_HOSTNAME,
        echo_port=ECHO_PORT,
        echo_token=token,
        logs={
            "main": layout.log("sshd"),
            "totp": paths.log("sshd-totp"),
            "jump": paths.log("sshd-jump"),
            "inner": paths.log("sshd-inner"),
            "agent": paths.console("ssh-agent"),
            "echo": paths.console("braas-echo"),
        },
    )


def down(layout: tb.Layout) -> None:
    """Stop the lab daemons by recorded pid, then remove the namespace, the veth and the PAM file."""
    paths = _paths(layout)
    state = tb._load_state(layout)
    for daemon in reversed(LAB_DAEMONS):
        entry = state.get(daemon)
        if entry:
            tb._stop_pid(int(entry["pid"]), daemon)
            state.pop(daemon)
            tb._save_state(layout, state)  # a failure later still leaves an accurate record
        if daemon.startswith("sshd-"):
            paths.pid_file(daemon).unlink(missing_ok=True)
    paths.agent_socket.unlink(missing_ok=True)
    if NETNS_PATH.exists():
        left = _ip("netns", "pids", NETNS, check=False).stdout.split()
        if left:  # e.g. ssh sessions still open: the namespace lives on until they end
            tb._say(f"processes still in namespace {NETNS}: {' '.join(left)}")
        _ip("netns", "del", NETNS)
    if _link_exists(VETH_ROOT):  # its namespace outlived the delete (see above)
        _ip("link", "del", VETH_ROOT)
    PAM_FILE.unlink(missing_ok=True)


def _ns_listening(pid: int) -> list[str]:
    proc = tb._run(["nsenter", f"--net={NETNS_PATH}", "ss", "-ltnpH"], check=False, timeout=10)
    found = {line.split()[3] for line in proc.stdout.splitlines() if f"pid={pid}," in line}
    return sorted(f"{NETNS}:{addr}" for addr in found)


def status(layout: tb.Layout) -> bool:
    """Print one line per lab daemon and one for the namespace; True when all are up."""
    state = tb._load_state(layout)
    all_up = True
    for daemon in LAB_DAEMONS:
        pid = state.get(daemon, {}).get("pid")
        running = tb._is_running(pid, daemon)
        label, where = ("running" if running else "stopped"), ""
        if running and daemon in ("sshd-jump", "sshd-inner", "braas-echo"):
            running = _same_netns(pid)
            label = "running" if running else "stale"
            where = ", ".join(_ns_listening(pid)) if running else "(in an orphaned namespace: run `testbed up`)"
        elif running:
            where = ", ".join(tb._listening(pid))
        all_up &= running
        print(f"{daemon:10} {label:8} pid={pid or '-':<8} {where}")
    has_ns = NETNS_PATH.exists()
    has_veth = _link_exists(VETH_ROOT)
    all_up &= has_ns and has_veth
    print(
        f"{'netns':10} {'present' if has_ns else 'absent':8} {NETNS}, {VETH_ROOT} "
        f"{ROOT_ADDR} {'up' if has_veth else 'absent'} <-> {NS_ADDR}"
    )
    return all_up


__all__ = ["KEY_PASSPHRASE", "SSHLab", "down", "status", "up"]
