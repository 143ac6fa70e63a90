"""A real single-host HPC test cluster: sshd + munge + MariaDB + slurmdbd + slurmctld + slurmd.

`up()` builds (or re-uses) everything and returns a `Testbed`; `down()` stops exactly the daemons
`up()` started, by the pids recorded in `<base>/state.json`; `status()` reports them.

Everything runs as root, without systemd. The library is importable both as
`from tests.testbed import testbed` and as plain `import testbed` (only stdlib at import time).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# sshlab imports this module back; it only uses it inside functions, so the cycle is harmless.
if __package__:
    from . import gridengine, nodens, sshlab
else:  # plain `import testbed`, as the command-line script does
    import gridengine
    import nodens
    import sshlab

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_SRC = REPO_ROOT / "braas_hpc" / "bpy_blender.py"
PBS_STANDIN_SRC = Path(__file__).resolve().parent / "pbs" / "pbs_standin.py"
# A stand-in for IT4I's `it4ifree` (the allocation's balance, in the format IT4I documents): not IT4I's program.
IT4IFREE_STANDIN_SRC = Path(__file__).resolve().parent / "allocation" / "it4ifree_standin.py"
PBS_COMMANDS = ("qsub", "qstat", "qdel")

BPY_VERSION = "4.5.4"
SYSTEM_PYTHON = "/usr/bin/python3.11"
APT_PACKAGES = ("openssh-server", "munge", "slurm-wlm", "slurmdbd", "mariadb-server", "python3.11",
                "strace")  # strace: the secrets test watches every write(2) of the client

CLUSTER_NAME = "braastb"
ACCOUNT = "braas"
MYSQL_PORT = 3307
SLURMDBD_PORT = 6819
SLURMCTLD_PORT = 6817
SLURMD_PORT = 6818
# GPUs that exist only in Slurm's books (their files are /dev/null, see _ensure_fake_gpu_devices),
# so `--gpus`/`--gres` and the PBS stand-in's `ngpus` are real scheduling requests that can queue.
NODE_GPUS = 2

# Start order; down() walks it backwards.
DAEMONS = ("munged", "sshd", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "slurmd2")
# Each compute node's slurmd, by its name in state.json; every node is a network namespace (nodens.py).
def node_daemons() -> dict[str, nodens.Node]:
    """Each compute node's slurmd by daemon name. A function, not a constant: nodens imports this module,
    so reading nodens.NODES at import time breaks when nodens is imported first."""
    return {"slurmd": nodens.NODES[0], "slurmd2": nodens.NODES[1]}
# The program behind a daemon name, when they differ (/proc/PID/comm is what is checked before a signal).
PROGRAMS = {"slurmd2": "slurmd"}

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class TestbedError(RuntimeError):
    """A step of the testbed failed; the message names the daemon/step and shows its log."""

    __test__ = False  # not a pytest test class despite the name


@dataclass(frozen=True)
class Testbed:
    """What a test needs to reach the cluster."""

    __test__ = False

    ssh_host: str
    ssh_port: int
    user: str
    key_file: Path
    known_hosts: Path
    workdir: str
    slurm_conf: Path
    base_dir: Path
    preset_file: Path
    blender: Path
    ssh_lab: sshlab.SSHLab  # more keys, agent, TOTP sshd, jump/inner hosts in a namespace


@dataclass(frozen=True)
class Layout:
    """All paths and settings, resolved once from the environment."""

    base: Path
    user: str
    ssh_port: int

    @classmethod
    def from_env(cls) -> Layout:
        base = Path(os.environ.get("BRAAS_TESTBED_DIR", "/var/tmp/braas-testbed"))
        return cls(
            base=base.resolve(),
            user=os.environ.get("BRAAS_TESTBED_USER", "braastb"),
            ssh_port=int(os.environ.get("BRAAS_TESTBED_SSH_PORT", "2222")),
        )

    @property
    def home(self) -> Path:
        return Path("/home") / self.user

    @property
    def workdir(self) -> Path:
        return self.home / "work"

    @property
    def bin(self) -> Path:
        return self.base / "bin"

    @property
    def bpy_site(self) -> Path:
        return self.base / "bpy-site"

    @property
    def client(self) -> Path:
        return self.base / "client"

    @property
    def key_file(self) -> Path:
        return self.client / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.client / "known_hosts"

    @property
    def sshd(self) -> Path:
        return self.base / "sshd"

    @property
    def mysql(self) -> Path:
        return self.base / "mysql"

    @property
    def mysql_socket(self) -> Path:
        return self.mysql / "run" / "mysqld.sock"

    @property
    def slurm(self) -> Path:
        return self.base / "slurm"

    @property
    def slurm_conf(self) -> Path:
        return self.slurm / "slurm.conf"

    @property
    def state_file(self) -> Path:
        return self.base / "state.json"

    @property
    def db_password_file(self) -> Path:
        return self.base / "db-password"

    @property
    def sge_root(self) -> Path:
        return self.base / "sge"  # Grid Engine's SGE_ROOT (gridengine.py)

    @property
    def session_path(self) -> str:
        return f"{self.bin}:/usr/local/bin:/usr/bin:/bin"

    def log(self, daemon: str) -> Path:
        return {
            "munged": Path("/var/log/munge/munged.log"),
            "sshd": self.sshd / "sshd.log",
            "mariadbd": self.mysql / "error.log",
            "slurmdbd": self.slurm / "slurmdbd.log",
            "slurmctld": self.slurm / "slurmctld.log",
            "slurmd": self.slurm / "slurmd.log",
            "slurmd2": self.slurm / "slurmd2.log",
        }[daemon]

    def pid_file(self, daemon: str) -> Path:
        return {
            "munged": Path("/run/munge/munged.pid"),
            "sshd": self.sshd / "sshd.pid",
            "mariadbd": self.mysql / "run" / "mariadbd.pid",
            "slurmdbd": self.slurm / "slurmdbd.pid",
            "slurmctld": self.slurm / "slurmctld.pid",
            # slurm.conf's SlurmdPidFile names it by node (%n): a slurmd kills the one its pid file names.
            **{d: self.slurm / f"slurmd-{node.slurm_name}.pid" for d, node in node_daemons().items()},
        }[daemon]

    def console(self, daemon: str) -> Path:
        """stdout/stderr of a daemon we spawned (errors printed before its log file is open)."""
        return self.log(daemon).with_name(f"{daemon}.console.log")

    def slurm_env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.slurm_conf)}


# --------------------------------------------------------------------------------------------
# small helpers


def _say(msg: str) -> None:
    print(f"[testbed] {msg}", file=sys.stderr, flush=True)


def _run(
    cmd: list[str],
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"command timed out after {timeout:.0f}s: {' '.join(cmd)}") from exc
    if check and proc.returncode != 0:
        raise TestbedError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return proc


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return "\n".join(text[-lines:]) or f"({path} is empty)"


def _daemon_error(layout: Layout, daemon: str, what: str) -> TestbedError:
    parts = [f"{daemon}: {what}", f"--- last lines of {layout.log(daemon)} ---", _tail(layout.log(daemon))]
    console = layout.console(daemon)
    if console.exists() and console.stat().st_size:
        parts += [f"--- last lines of {console} ---", _tail(console)]
    return TestbedError("\n".join(parts))


def _wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    """Poll `predicate` until it returns true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write only when the content changed, so a second `up` touches nothing; through a new file renamed
    over the old one, so a reader (another test session's ssh) never sees it half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_text(text)
        if path.exists():  # the owner a daemon may insist on stays
            old = path.stat()
            os.chown(temp, old.st_uid, old.st_gid)
        os.replace(temp, path)
    os.chmod(path, mode)


def _chown(path: Path, user: str, group: str | None = None) -> None:
    shutil.chown(path, user, group or user)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# processes


def _proc_comm(pid: int) -> str | None:
    """The program name of a live process, None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
        _reap(pid)
        return None
    return comm


# Daemons spawned by this process. Keeping the Popen objects means they are never garbage
# collected while running (which warns, and pytest may turn warnings into errors) and lets us reap
# them when a test process calls up() and down() itself.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def _is_running(pid: int | None, daemon: str) -> bool:
    # /proc/PID/comm is truncated to 15 chars; all our program names are shorter.
    return bool(pid) and _proc_comm(pid) == PROGRAMS.get(daemon, daemon)[:15]


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _spawn(layout: Layout, daemon: str, cmd: list[str], env: dict[str, str] | None = None) -> int:
    return spawn_daemon(layout.console(daemon), cmd, env)


def spawn_daemon(console: Path, cmd: list[str], env: dict[str, str] | None = None) -> int:
    """Start a daemon in the foreground mode of its own session, so its pid is exactly ours; its
    stdout and stderr go to `console` (what it prints before its log file is open)."""
    console.parent.mkdir(parents=True, exist_ok=True)
    with open(console, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _stop_pid(pid: int, daemon: str, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait, then SIGKILL; returns when the process is gone (or only a zombie)."""
    if not _is_running(pid, daemon):
        return
    os.kill(pid, signal.SIGTERM)
    if _wait_for(lambda: not _is_running(pid, daemon), timeout, 0.1):
        return
    _say(f"{daemon} (pid {pid}) ignored SIGTERM for {timeout:.0f}s, sending SIGKILL")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if not _wait_for(lambda: not _is_running(pid, daemon), 10.0, 0.1):
        raise TestbedError(f"{daemon}: pid {pid} survived SIGKILL")


# --------------------------------------------------------------------------------------------
# state.json: which daemons this testbed started


def _load_state(layout: Layout) -> dict[str, dict]:
    try:
        return json.loads(layout.state_file.read_text()).get("daemons", {})
    except (OSError, ValueError):
        return {}


def _save_state(layout: Layout, daemons: dict[str, dict]) -> None:
    tmp = layout.state_file.with_suffix(f".{os.getpid()}.tmp")  # two `up` at once each write their own
    tmp.write_text(json.dumps({"daemons": daemons}, indent=2) + "\n")
    tmp.replace(layout.state_file)


def _record(layout: Layout, daemon: str, pid: int, owned: bool = True, config: str | None = None) -> None:
    state = _load_state(layout)
    state[daemon] = {"pid": pid, "log": str(layout.log(daemon)), "owned": owned}
    if config is not None:  # hash of the config files the daemon was started with
        state[daemon]["config"] = config
    _save_state(layout, state)


def _recorded_running(layout: Layout, daemon: str) -> int | None:
    """The pid of a daemon from a previous `up` that is still that program, else None."""
    entry = _load_state(layout).get(daemon)
    if entry and _is_running(entry.get("pid"), daemon):
        return int(entry["pid"])
    return None


def _require_free_port(layout: Layout, daemon: str, port: int) -> None:
    if _port_open(port):
        raise TestbedError(
            f"{daemon}: port 127.0.0.1:{port} is already taken by a process this testbed did not "
            f"start (see `ss -ltnp`); stop it or run `testbed down` first"
        )


# --------------------------------------------------------------------------------------------
# packages, user, files


def _missing_packages() -> list[str]:
    missing = []
    for pkg in (*APT_PACKAGES, *gridengine.APT_PACKAGES):
        proc = _run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False)
        if proc.returncode != 0 or "install ok installed" not in proc.stdout:
            missing.append(pkg)
    return missing


def install_packages() -> None:
    missing = _missing_packages()
    if not missing:
        return
    _say(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update"], env=env, timeout=600)
    if set(missing) & set(gridengine.APT_PACKAGES):  # answer their questions before they are asked
        _run(["debconf-set-selections"], input=gridengine.DEBCONF_SELECTIONS)
    _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env, timeout=1800)


def ensure_user(layout: Layout) -> None:
    try:
        pwd.getpwnam(layout.user)
    except KeyError:
        _say(f"creating user {layout.user}")
        _run(["useradd", "--create-home", "--home-dir", str(layout.home), "--shell", "/bin/bash", layout.user])
    # useradd leaves the account locked ("!"), and sshd then refuses even key logins.
    if _shadow_hash(layout.user) != "*":
        _run(["usermod", "-p", "*", layout.user])
    if not layout.home.exists():  # after `down --purge`, which removes the home only
        shutil.copytree("/etc/skel", layout.home)
        _run(["chown", "-R", f"{layout.user}:{layout.user}", str(layout.home)])
    os.chmod(layout.home, 0o755)
    layout.workdir.mkdir(exist_ok=True)
    _chown(layout.workdir, layout.user)


def _shadow_hash(user: str) -> str | None:
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields[1]
    return None


def ensure_base(layout: Layout) -> None:
    for d in (layout.base, layout.bin, layout.client, layout.sshd, layout.slurm):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
    os.chmod(layout.client, 0o700)  # the private key lives here


def ensure_keys(layout: Layout) -> None:
    if not layout.key_file.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "braas-testbed-client", "-f", str(layout.key_file)])
    host_key = layout.sshd / "ssh_host_ed25519_key"
    if not host_key.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "braas-testbed-host", "-f", str(host_key)])
    os.chmod(layout.key_file, 0o600)
    os.chmod(host_key, 0o600)

    # Pin exactly our host key for [127.0.0.1]:PORT (plain, readable format); the lab's pins that
    # sshlab.write_known_hosts adds stay, so a second `up` does not take them away for a moment.
    host_pub = host_key.with_suffix(".pub").read_text().split()
    main = f"[127.0.0.1]:{layout.ssh_port}"
    current = layout.known_hosts.read_text().splitlines() if layout.known_hosts.exists() else []
    others = [line for line in current if line.split(" ", 1)[0] != main]
    _write(layout.known_hosts, "\n".join([f"{main} {host_pub[0]} {host_pub[1]}", *others]) + "\n")

    ssh_dir = layout.home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    auth = ssh_dir / "authorized_keys"
    client_pub = layout.key_file.with_suffix(".pub").read_text().strip()
    existing = auth.read_text().splitlines() if auth.exists() else []
    if client_pub not in existing:
        _write(auth, "\n".join([*existing, client_pub]) + "\n", 0o600)
    for path in (ssh_dir, auth):
        _chown(path, layout.user)
    os.chmod(ssh_dir, 0o700)
    os.chmod(auth, 0o600)


PROFILE_BEGIN = "# >>> braas-testbed >>>"
PROFILE_END = "# <<< braas-testbed <<<"


def ensure_login_profile(layout: Layout) -> None:
    """Session environment for *login* shells.

    The primary mechanism is sshd's `SetEnv` (see _sshd_config), which sets PATH and SLURM_CONF
    for every ssh session, checked by `_verify_ssh`. But a login shell (`bash -l -c ...`, or a
    job script starting with `#!/bin/bash -l`) runs /etc/profile, which on Debian resets PATH.
    ~/.profile runs after it, so the same two variables are set again there.
    """
    profile = layout.home / ".profile"
    text = profile.read_text() if profile.exists() else ""
    if PROFILE_BEGIN in text:
        text = text[: text.index(PROFILE_BEGIN)].rstrip("\n") + "\n"
    block = (
        f"{PROFILE_BEGIN}\nexport PATH={layout.session_path}\nexport SLURM_CONF={layout.slurm_conf}\n"
        f"export SGE_ROOT={layout.sge_root}\nexport SGE_CELL={gridengine.CELL}\n{PROFILE_END}\n"
    )
    _write(profile, text + block)
    _chown(profile, layout.user)


# --------------------------------------------------------------------------------------------
# blender on the cluster: bpy wheel + the project's launcher


def ensure_bpy(layout: Layout) -> None:
    marker = layout.bpy_site / f".braas-testbed-bpy-{BPY_VERSION}"
    if marker.exists():
        return
    _say(f"installing bpy=={BPY_VERSION} into {layout.bpy_site} (large download the first time)")
    if layout.bpy_site.exists():
        shutil.rmtree(layout.bpy_site)  # a half-finished earlier attempt
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--target",
        str(layout.bpy_site),
        f"bpy=={BPY_VERSION}",
    ]
    if sys.version_info[:2] != (3, 11):
        # The site dir is run by Debian's python3.11, so pick cp311 wheels whatever runs us.
        pip += ["--python-version", "3.11", "--only-binary=:all:"]
    # umask 022 so that the cluster user can read what root's pip writes.
    _run(["sh", "-c", 'umask 022 && exec "$@"', "sh", *pip], timeout=1800)
    marker.touch()
    os.chmod(layout.bpy_site, 0o755)


def ensure_blender(layout: Layout) -> Path:
    launcher = layout.bin / "bpy_blender.py"
    if LAUNCHER_SRC.exists():
        _write(launcher, LAUNCHER_SRC.read_text())
    wrapper = layout.bin / "blender"
    _write(
        wrapper,
        "#!/bin/sh\n"
        "# braas-hpc testbed: Blender = the bpy wheel run by the project's standalone launcher.\n"
        f'PYTHONPATH="{layout.bpy_site}${{PYTHONPATH:+:$PYTHONPATH}}"\n'
        "export PYTHONPATH\n"
        f'exec {SYSTEM_PYTHON} "{launcher}" "$@"\n',
        0o755,
    )
    return wrapper


def ensure_ffmpeg(layout: Layout) -> Path:
    """The cluster's ffmpeg for movies made in the finish step: the build imageio-ffmpeg ships (a project
    dependency, so it is here whenever the project is installed), copied where the cluster user can run it.
    Not on the cluster user's PATH as `ffmpeg`: a preset names it by its path, as on a real site."""
    import imageio_ffmpeg

    source = Path(imageio_ffmpeg.get_ffmpeg_exe())
    target = layout.bin / "ffmpeg-imageio"
    if not target.is_file() or target.stat().st_size != source.stat().st_size:
        layout.bin.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(source, temp)
        os.chmod(temp, 0o755)
        os.replace(temp, target)  # a job running the old copy keeps it
    os.chmod(target, 0o755)
    return target


def ensure_pbs_standin(layout: Layout) -> None:
    """PBS Pro's qsub/qstat/qdel for the cluster user: the stand-in in tests/testbed/pbs (not PBS Pro).

    One copy of the program (refreshed on every `up`) and a symlink per command; it picks the
    command from the name it is called by and runs jobs through this cluster's Slurm.
    """
    target = layout.bin / PBS_STANDIN_SRC.name
    _write(target, PBS_STANDIN_SRC.read_text(), 0o755)
    for name in PBS_COMMANDS:
        link = layout.bin / name
        if link.is_symlink() and os.readlink(link) == target.name:
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(target.name)


def ensure_allocation_standin(layout: Layout) -> None:
    """`it4ifree` for the cluster user, on the session PATH (tests/testbed/allocation; refreshed on every `up`)."""
    _write(layout.bin / "it4ifree", IT4IFREE_STANDIN_SRC.read_text(), 0o755)


def check_blender(layout: Layout) -> None:
    launcher = layout.bin / "bpy_blender.py"
    if launcher.exists():
        cmd = [str(layout.bin / "blender"), "--version"]
    else:
        _say(f"{LAUNCHER_SRC} does not exist yet; only checking that bpy imports")
        cmd = ["env", f"PYTHONPATH={layout.bpy_site}", SYSTEM_PYTHON, "-c", "import bpy"]
    proc = _run(["runuser", "-u", layout.user, "--", *cmd], check=False, timeout=120)
    if proc.returncode != 0:
        raise TestbedError(
            f"blender: `{' '.join(cmd)}` as {layout.user} failed ({proc.returncode}):\n"
            + "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        )


# --------------------------------------------------------------------------------------------
# munge


def _munge_answers() -> bool:
    proc = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, timeout=15)
    return proc.returncode == 0


def start_munged(layout: Layout) -> None:
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        _run(["mungekey", "--create", f"--keyfile={key}"])
        _chown(key, "munge")
        os.chmod(key, 0o600)
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    _chown(run_dir, "munge")
    os.chmod(run_dir, 0o755)

    if pid := _recorded_running(layout, "munged"):
        return
    if _munge_answers():
        # Someone else's munged (e.g. the distribution's): use it, never stop it.
        pid = _read_pid(layout.pid_file("munged")) or 0
        _record(layout, "munged", pid, owned=False)
        return
    # munged daemonizes itself; its pid file is the only reliable pid.
    layout.pid_file("munged").unlink(missing_ok=True)
    _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=False, timeout=30)
    if not _wait_for(_munge_answers, START_TIMEOUT, 0.25):
        raise _daemon_error(layout, "munged", "did not answer `munge -n | unmunge` in time")
    pid = _read_pid(layout.pid_file("munged"))
    if not _is_running(pid, "munged"):
        raise _daemon_error(layout, "munged", "answers but its pid file names no munged")
    _record(layout, "munged", pid)


# --------------------------------------------------------------------------------------------
# sshd


def _sshd_config(layout: Layout) -> str:
    # PATH/SLURM_CONF for sessions: sshd's SetEnv is applied after sshd's own default PATH, so
    # it wins (verified by _verify_ssh over a real connection). ~/.profile repeats it for login
    # shells, see ensure_login_profile.
    return f"""\
# braas-hpc testbed sshd, generated by tests/testbed/testbed.py
ListenAddress 127.0.0.1
Port {layout.ssh_port}
HostKey {layout.sshd / "ssh_host_ed25519_key"}
PidFile {layout.pid_file("sshd")}
LogLevel VERBOSE
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PermitRootLogin no
AllowUsers {layout.user}
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
UsePAM no
Subsystem sftp internal-sftp
# Tests open many connections at once; the default (10:30:100) drops some at random.
MaxStartups 100:30:200
MaxSessions 100
SetEnv SLURM_CONF={layout.slurm_conf} PATH={layout.session_path} SGE_ROOT={layout.sge_root} SGE_CELL={gridengine.CELL}
"""


def start_sshd(layout: Layout) -> None:
    config = layout.sshd / "sshd_config"
    _write(config, _sshd_config(layout))
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation dir
    _run(["/usr/sbin/sshd", "-t", "-f", str(config)])
    digest = hashlib.sha256(config.read_bytes()).hexdigest()[:16]
    if pid := _recorded_running(layout, "sshd"):
        if _load_state(layout)["sshd"].get("config") == digest:
            return
        # A session environment changed (SetEnv): restart the listener; open sessions are its children's and stay.
        _say(f"sshd_config changed; restarting sshd (pid {pid})")
        _stop_pid(pid, "sshd")
    _require_free_port(layout, "sshd", layout.ssh_port)
    pid = _spawn(layout, "sshd", ["/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(layout.log("sshd"))])
    _record(layout, "sshd", pid, config=digest)
    if not _wait_for(lambda: _ssh_banner(layout.ssh_port), START_TIMEOUT):
        raise _daemon_error(layout, "sshd", f"no SSH banner on 127.0.0.1:{layout.ssh_port}")


def _ssh_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.settimeout(2)
            return sock.recv(64).startswith(b"SSH-2.0")
    except OSError:
        return False


def ssh_command(layout: Layout, remote: str) -> list[str]:
    """An OpenSSH command line that trusts exactly the pinned host key."""
    return [
        "ssh",
        "-i",
        str(layout.key_file),
        "-p",
        str(layout.ssh_port),
        "-o",
        f"UserKnownHostsFile={layout.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-F",
        "/dev/null",
        f"{layout.user}@127.0.0.1",
        remote,
    ]


def _verify_ssh(layout: Layout) -> None:
    # Grid Engine's qsub/qstat/qdel come first once its settings.sh is sourced (qacct has no PBS namesake).
    remote = ('echo "$PATH"; command -v blender sbatch qsub qstat qdel qacct; echo "$SLURM_CONF $SGE_ROOT $SGE_CELL"; '
              '. "$SGE_ROOT/$SGE_CELL/common/settings.sh" && command -v qsub qstat qdel')
    proc = _run(ssh_command(layout, remote), check=False, timeout=60)
    pbs = [str(layout.bin / name) for name in PBS_COMMANDS]
    sge_bin = layout.sge_root / "bin" / gridengine.arch()
    want = [layout.session_path, str(layout.bin / "blender"), "/usr/bin/sbatch", *pbs, "/usr/bin/qacct",
            str(layout.slurm_conf), str(layout.sge_root), gridengine.CELL, *(str(sge_bin / n) for n in PBS_COMMANDS)]
    if proc.returncode != 0 or proc.stdout.split() != want:
        raise _daemon_error(
            layout,
            "sshd",
            f"session environment check failed (rc={proc.returncode}); expected {want}, got:\n"
            f"{proc.stdout}{proc.stderr}",
        )


# --------------------------------------------------------------------------------------------
# MariaDB


def _mysql(layout: Layout, sql: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Root logs in over the socket with unix_socket authentication: no root password exists.
    return _run(
        ["mariadb", "--no-defaults", f"--socket={layout.mysql_socket}", "-u", "root", "--batch", "-e", sql],
        check=check,
        timeout=30,
    )


def _db_password(layout: Layout) -> str:
    path = layout.db_password_file
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16) + "\n")
    os.chmod(path, 0o600)
    return path.read_text().strip()


def start_mariadb(layout: Layout) -> None:
    data = layout.mysql / "data"
    run_dir = layout.mysql_socket.parent
    for d in (layout.mysql, data, run_dir):
        d.mkdir(parents=True, exist_ok=True)
        _chown(d, "mysql")
    os.chmod(layout.mysql, 0o750)
    if not (data / "mysql").exists():
        _say("initialising the MariaDB data directory")
        _run(
            [
                "mariadb-install-db",
                "--no-defaults",
                "--user=mysql",
                f"--datadir={data}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            timeout=300,
        )
    if not _recorded_running(layout, "mariadbd"):
        _require_free_port(layout, "mariadbd", MYSQL_PORT)
        layout.mysql_socket.unlink(missing_ok=True)
        # --no-defaults: ignore /etc/mysql/*, so the distribution's settings cannot interfere.
        pid = _spawn(
            layout,
            "mariadbd",
            [
                "/usr/sbin/mariadbd",
                "--no-defaults",
                "--user=mysql",
                f"--datadir={data}",
                f"--socket={layout.mysql_socket}",
                "--bind-address=127.0.0.1",
                f"--port={MYSQL_PORT}",
                f"--pid-file={layout.pid_file('mariadbd')}",
                f"--log-error={layout.log('mariadbd')}",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M",
            ],
        )
        _record(layout, "mariadbd", pid)
    ok = _wait_for(lambda: _mysql(layout, "SELECT 1", check=False).returncode == 0, START_TIMEOUT, 0.5)
    if not ok:
        raise _daemon_error(layout, "mariadbd", f"did not answer on {layout.mysql_socket}")
    pw = _db_password(layout)
    grants = "".join(
        f"CREATE USER IF NOT EXISTS 'slurm'@'{host}' IDENTIFIED BY '{pw}';"
        f"ALTER USER 'slurm'@'{host}' IDENTIFIED BY '{pw}';"
        f"GRANT ALL ON slurm_acct_db.* TO 'slurm'@'{host}';"
        for host in ("127.0.0.1", "localhost")
    )
    _mysql(layout, f"CREATE DATABASE IF NOT EXISTS slurm_acct_db;{grants}FLUSH PRIVILEGES;")


# --------------------------------------------------------------------------------------------
# Slurm


def _slurm_conf(layout: Layout) -> str:
    s = layout.slurm
    first, second = nodens.NODES
    return f"""\
# braas-hpc testbed, generated by tests/testbed/testbed.py
ClusterName={CLUSTER_NAME}
# Each slurmd runs in its compute node's namespace (nodens.py) and reaches slurmctld on the login side.
SlurmctldHost=localhost({nodens.ROOT_ADDR})
SlurmctldPort={SLURMCTLD_PORT}
SlurmdPort={SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={s / "state"}
# Two slurmds on one host: per-node spool and pid file (%n = the node's Slurm name); each slurmd is
# started with -L and its own log file (testbed.py, Layout.log), this one is the first node's.
SlurmdSpoolDir={s / "spool" / "%n"}
SlurmctldPidFile={layout.pid_file("slurmctld")}
SlurmdPidFile={s / "slurmd-%n.pid"}
SlurmctldLogFile={layout.log("slurmctld")}
SlurmdLogFile={layout.log("slurmd")}
# No cgroups without systemd: track processes through /proc.
ProctrackType=proctrack/linuxproc
MpiDefault=none
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={SLURMDBD_PORT}
# Record GPU allocations, so `sacct -o AllocTRES` shows gres/gpu=N per job.
AccountingStorageTRES=gres/gpu
SchedulerType=sched/backfill
# A test cluster with a handful of jobs: look at pending jobs every second (the default main loop runs
# every 60 s and backfill every 30 s; a site tunes these for thousands of jobs), so a dependent or
# queued job starts as soon as it can, as it would on a quiet cluster.
SchedulerParameters=sched_interval=1,bf_interval=1,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
# A node silent this long is marked DOWN and its jobs end (NODE_FAIL): Slurm's 300 s would make the
# node-crash test wait five minutes. The slurmd-kill test brings its daemon back well within it.
SlurmdTimeout=30
MaxArraySize=10001
MinJobAge=300
# node2 before localhost: while slurmctld reads the node lines, a lookup of any name finds the only node
# so far when that one is called "localhost" (Slurm's single-host shortcut), and a node after it would
# be refused as "Duplicated NodeHostName".
NodeName={second.slurm_name} NodeAddr={second.node_addr} CPUs={_node_cpus()} RealMemory={_node_memory_mb()} \
Gres=gpu:{NODE_GPUS} State=UNKNOWN
NodeName={first.slurm_name} NodeAddr={first.node_addr} CPUs={_node_cpus()} RealMemory={_node_memory_mb()} \
Gres=gpu:{NODE_GPUS} State=UNKNOWN
# Preemption by partition: a job in a partition of a higher PriorityTier takes the nodes of running jobs in
# partitions of a lower one whose PreemptMode allows it. Only qhigh is higher and only qlow allows it (every
# other partition says OFF), so only a test that submits to qhigh ever preempts, and only jobs in qlow.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
# As at many sites, a batch job is requeued (after preemption or a node failure) only when it asked with
# --requeue: without it a preempted job is cancelled (Slurm's default, 1, would requeue every job).
JobRequeue=0
# A requeued job waits as long as a step credential lives before it may start again (Slurm's default 120 s):
# 30 s keeps a preemption test short and is still far more than a step launch here takes.
AuthInfo=cred_expire=30
PartitionName=qcpu Nodes={first.slurm_name} Default=YES MaxTime=INFINITE State=UP PreemptMode=OFF
PartitionName=qgpu Nodes={first.slurm_name} Default=NO MaxTime=INFINITE State=UP PreemptMode=OFF
# The second node is in this partition only, so jobs elsewhere keep running on the first node alone.
PartitionName=qpair Nodes={first.slurm_name},{second.slurm_name} Default=NO MaxTime=INFINITE State=UP PreemptMode=OFF
# A preemptible queue and the queue that preempts it, on the second node (off the default partitions' node).
PartitionName=qlow Nodes={second.slurm_name} Default=NO MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=qhigh Nodes={second.slurm_name} Default=NO MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
"""


def _node_cpus() -> int:
    # Claiming more CPUs than the host has would leave the node drained ("low CPU count").
    return max(1, min(2, os.cpu_count() or 1))


def _node_memory_mb() -> int:
    # Claiming more memory than the host has would drain the node, too.
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(256, min(4000, int(line.split()[1]) // 1024 - 256))
    return 1000


def _slurmdbd_conf(layout: Layout) -> str:
    return f"""\
# braas-hpc testbed, generated by tests/testbed/testbed.py
AuthType=auth/munge
DbdHost=localhost
DbdPort={SLURMDBD_PORT}
SlurmUser=root
PidFile={layout.pid_file("slurmdbd")}
LogFile={layout.log("slurmdbd")}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={MYSQL_PORT}
StorageUser=slurm
StoragePass={_db_password(layout)}
StorageLoc=slurm_acct_db
"""


def _fake_gpu_files(layout: Layout) -> list[Path]:
    return [layout.slurm / "gpu" / f"gpu{i}" for i in range(NODE_GPUS)]


def _ensure_fake_gpu_devices(layout: Layout) -> None:
    """Device nodes for the fake GPUs: each is another name for /dev/null (char 1:3).

    Slurm 22.05 drops a GPU without File= ("Removing file-less GPU") and then drains the node, so
    every GPU needs a file; a char device keeps slurmd from logging "not a valid character or
    block device" at each start. Without CAP_MKNOD a plain file works too (with that log line).
    """
    null_dev = os.makedev(1, 3)
    for path in _fake_gpu_files(layout):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            st = path.lstat()
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == null_dev:
                continue
            path.unlink()
        except FileNotFoundError:
            pass
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, null_dev)
        except PermissionError:
            path.touch(mode=0o600)


def _gres_conf(layout: Layout) -> str:
    # AutoDetect=off: no NVML/RSMI probing; the GPUs are exactly the files listed here.
    files = _fake_gpu_files(layout)
    return f"""\
# braas-hpc testbed, generated by tests/testbed/testbed.py
# Fake GPUs: real Slurm GRES (jobs wait for them and get CUDA_VISIBLE_DEVICES), no hardware.
AutoDetect=off
NodeName={",".join(node.slurm_name for node in nodens.NODES)} Name=gpu File={files[0].parent}/gpu[0-{NODE_GPUS - 1}]
"""


def write_slurm_configs(layout: Layout) -> None:
    for d in ("state", *(f"spool/{node.slurm_name}" for node in nodens.NODES)):
        (layout.slurm / d).mkdir(parents=True, exist_ok=True)
    _write(layout.slurm_conf, _slurm_conf(layout))
    # slurmd and slurmctld read gres.conf from the directory of slurm.conf.
    _ensure_fake_gpu_devices(layout)
    _write(layout.slurm / "gres.conf", _gres_conf(layout))
    # slurmdbd insists on mode 600 and ownership by SlurmUser; it has the DB password.
    _write(layout.slurm / "slurmdbd.conf", _slurmdbd_conf(layout), 0o600)


def _slurm_cmd(layout: Layout, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return _run(list(args), check=False, env=layout.slurm_env(), timeout=timeout)


def _dbd_answers(layout: Layout) -> bool:
    return _slurm_cmd(layout, "sacctmgr", "-n", "-P", "show", "cluster").returncode == 0


def start_slurmdbd(layout: Layout) -> None:
    if not _recorded_running(layout, "slurmdbd"):
        _require_free_port(layout, "slurmdbd", SLURMDBD_PORT)
        pid = _spawn(layout, "slurmdbd", ["/usr/sbin/slurmdbd", "-D"], env=layout.slurm_env())
        _record(layout, "slurmdbd", pid)
    ok = _wait_for(lambda: _port_open(SLURMDBD_PORT) and _dbd_answers(layout), START_TIMEOUT, 0.5)
    if not ok:
        raise _daemon_error(layout, "slurmdbd", "sacctmgr got no answer in time")


def _sacctmgr_list(layout: Layout, *query: str) -> list[str]:
    proc = _slurm_cmd(layout, "sacctmgr", "-n", "-P", "show", *query)
    if proc.returncode != 0:
        raise TestbedError(f"sacctmgr show {' '.join(query)} failed:\n{proc.stdout}{proc.stderr}")
    return [line for line in proc.stdout.splitlines() if line.strip()]


def _sacctmgr_add(layout: Layout, *what: str) -> None:
    proc = _slurm_cmd(layout, "sacctmgr", "-i", "add", *what)
    if proc.returncode != 0 and "Nothing new added" not in proc.stdout + proc.stderr:
        raise TestbedError(f"sacctmgr add {' '.join(what)} failed:\n{proc.stdout}{proc.stderr}")


def ensure_accounts(layout: Layout) -> None:
    if not _sacctmgr_list(layout, "cluster", CLUSTER_NAME, "format=cluster"):
        _sacctmgr_add(layout, "cluster", CLUSTER_NAME)
    if not _sacctmgr_list(layout, "account", ACCOUNT, "format=account"):
        _sacctmgr_add(
            layout, "account", ACCOUNT, f"cluster={CLUSTER_NAME}", "description=braas-hpc testbed", "organization=braas"
        )
    for user in (layout.user, "root"):
        assoc = _sacctmgr_list(
            layout, "assoc", "where", f"user={user}", f"account={ACCOUNT}", f"cluster={CLUSTER_NAME}", "format=user"
        )
        if not assoc:
            _sacctmgr_add(layout, "user", user, f"account={ACCOUNT}", f"cluster={CLUSTER_NAME}")


def _slurm_config_hash(layout: Layout) -> str:
    digest = hashlib.sha256()
    for path in (layout.slurm_conf, layout.slurm / "gres.conf"):
        digest.update(path.read_bytes() if path.exists() else b"")
    return digest.hexdigest()[:16]


def restart_slurm_on_config_change(layout: Layout) -> None:
    """Stop slurmd and slurmctld when they run with other config files than the ones on disk.

    `up` leaves running daemons alone, but node definitions (Gres=, GresTypes=) only take effect
    on a restart of both daemons (`scontrol reconfigure` is not enough). Jobs survive: slurmctld
    keeps its state in StateSaveLocation and running steps belong to slurmstepd, not slurmd.
    The start functions below then start them again, recording the new hash.
    """
    want = _slurm_config_hash(layout)
    state = _load_state(layout)
    running = {d: pid for d in (*node_daemons(), "slurmctld") if (pid := _recorded_running(layout, d))}
    if all(state[d].get("config") == want for d in running):
        return
    _say(f"Slurm config changed (now {want}): restarting {', '.join(running)}")
    for daemon, pid in running.items():  # the slurmds first: they report to slurmctld
        _stop_pid(pid, daemon)
        _remove_runtime_files(layout, daemon)
        state.pop(daemon, None)
        _save_state(layout, state)


def start_slurmctld(layout: Layout) -> None:
    if not _recorded_running(layout, "slurmctld"):
        _require_free_port(layout, "slurmctld", SLURMCTLD_PORT)
        pid = _spawn(layout, "slurmctld", ["/usr/sbin/slurmctld", "-D"], env=layout.slurm_env())
        _record(layout, "slurmctld", pid, config=_slurm_config_hash(layout))
    ok = _wait_for(lambda: "is UP" in _slurm_cmd(layout, "scontrol", "ping").stdout, START_TIMEOUT, 0.5)
    if not ok:
        raise _daemon_error(layout, "slurmctld", "`scontrol ping` did not report UP in time")


def _node_state(layout: Layout, node: str) -> str:
    # One line per partition the node is in; they all show the node's state.
    proc = _slurm_cmd(layout, "sinfo", "-h", "-N", "-n", node, "-o", "%T")
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""


# Drain reasons slurmctld itself sets when slurmd registers with less than slurm.conf declares
# (e.g. from a slurmd started before a config change). They never clear on their own, even once
# the node matches again; any other drain (an admin's) is left alone.
_REGISTRATION_DRAINS = ("reported lower than configured", "Low RealMemory", "Low socket*core*thread count")
# Registered and taking jobs ("planned": the backfill scheduler has reserved it for a pending job).
_USABLE_NODE_STATES = ("idle", "mixed", "allocated", "completing", "planned")


def _node_ready(layout: Layout, node: str) -> bool:
    state = _node_state(layout, node)
    if state in _USABLE_NODE_STATES:
        return True
    if state in ("drained", "draining"):
        reason = _slurm_cmd(layout, "sinfo", "-h", "-N", "-n", node, "-o", "%E").stdout.strip()
        if any(marker in reason for marker in _REGISTRATION_DRAINS):
            _say(f"resuming node {node}, drained by slurmctld: {reason}")
            _slurm_cmd(layout, "scontrol", "update", f"nodename={node}", "state=resume")
    return False


def _slurmd_in_node_netns(layout: Layout, daemon: str) -> bool:
    """True when the recorded slurmd runs in its node's namespace; one elsewhere (the root namespace of
    an older testbed, another node's or an orphaned namespace) is stopped so that it is started again in
    the right one. Running jobs survive: their steps belong to slurmstepd, not slurmd."""
    node = node_daemons()[daemon]
    pid = _recorded_running(layout, daemon)
    if pid is None:
        return False
    if node.runs_here(pid):
        return True
    _say(f"{daemon} (pid {pid}) runs outside namespace {node.netns}; restarting it there")
    _stop_pid(pid, daemon)
    _remove_runtime_files(layout, daemon)
    return False


def start_slurmd(layout: Layout) -> None:
    """Every node's slurmd (started together, then waited for: each takes a few seconds to register)."""
    # All misplaced ones are stopped before any is started: two swapped slurmds hold each other's port.
    missing = [daemon for daemon in node_daemons() if not _slurmd_in_node_netns(layout, daemon)]
    for daemon in missing:
        node = node_daemons()[daemon]
        if node.port_taken(SLURMD_PORT):
            raise _daemon_error(layout, daemon, f"port {SLURMD_PORT} in namespace {node.netns} is taken by a "
                                f"process this testbed did not record (see `ip netns pids {node.netns}`)")
        # -N: the node's name in slurm.conf (its namespace's host name is node.hostname); -L: its own log.
        cmd = node.in_netns(["/usr/sbin/slurmd", "-D", "-N", node.slurm_name, "-L", str(layout.log(daemon))])
        pid = _spawn(layout, daemon, cmd, env=layout.slurm_env())
        _record(layout, daemon, pid, config=_slurm_config_hash(layout))
    for daemon, node in node_daemons().items():
        # Not only idle: jobs from an earlier up may still run.
        if not _wait_for(lambda node=node: _node_ready(layout, node.slurm_name), START_TIMEOUT, 0.5):
            state = _node_state(layout, node.slurm_name)
            raise _daemon_error(layout, daemon, f"node {node.slurm_name} is not idle (state {state!r})")


def _sacct_answers(layout: Layout) -> bool:
    proc = _slurm_cmd(layout, "sacct", "-n", "-X", "-a", "-o", "JobID")
    return proc.returncode == 0 and "disabled" not in proc.stdout + proc.stderr


def check_sacct(layout: Layout) -> None:
    if not _wait_for(lambda: _sacct_answers(layout), 30.0, 0.5):
        raise _daemon_error(layout, "slurmdbd", "sacct gives no accounting answer")


# --------------------------------------------------------------------------------------------
# the braas-hpc preset


def preset_path() -> Path:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from braas_hpc.core import paths

    return paths.config_dir() / "presets" / "testbed.toml"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string of plain text is a valid TOML basic string


def write_preset(layout: Layout) -> Path:
    path = preset_path()
    items: list[tuple[str, str]] = [
        ("name", _toml_str("testbed")),
        ("title", _toml_str("Test cluster on this machine (tests/testbed)")),
        ("scheduler", _toml_str("slurm")),
        ("host", _toml_str("127.0.0.1")),
        ("port", str(layout.ssh_port)),
        ("user", _toml_str(layout.user)),
        ("key_file", _toml_str(str(layout.key_file))),
        ("known_hosts", _toml_str(str(layout.known_hosts))),
        # The machine's own ~/.ssh/config (root's, on a CI runner) must not change how tests connect.
        ("ssh_config", _toml_str("none")),
        ("ssh_backend", _toml_str("asyncssh")),
        ("workdir", _toml_str(str(layout.workdir))),
        ("account", _toml_str(ACCOUNT)),
        ("partition_cpu", _toml_str("qcpu")),
        ("partition_gpu", _toml_str("qgpu")),
        ("blender", _toml_str("blender")),
        ("env", "[]"),
    ]
    _write(path, "".join(f"{k} = {v}\n" for k, v in items))
    return path


# --------------------------------------------------------------------------------------------
# public API


def up() -> Testbed:
    """Build and start the test cluster; safe to call again (re-uses what runs and exists)."""
    if os.geteuid() != 0:
        raise TestbedError("the testbed must be set up as root")
    layout = Layout.from_env()
    t0 = time.monotonic()
    install_packages()
    ensure_base(layout)
    ensure_user(layout)
    ensure_keys(layout)
    ensure_login_profile(layout)
    ensure_bpy(layout)
    blender = ensure_blender(layout)
    ensure_ffmpeg(layout)
    ensure_pbs_standin(layout)
    ensure_allocation_standin(layout)
    write_slurm_configs(layout)

    start_munged(layout)
    start_sshd(layout)
    start_mariadb(layout)
    start_slurmdbd(layout)
    ensure_accounts(layout)
    nodens.ensure()  # before slurmctld: slurm.conf names the addresses it creates
    restart_slurm_on_config_change(layout)
    start_slurmctld(layout)
    start_slurmd(layout)
    check_sacct(layout)
    gridengine.up(layout)

    check_blender(layout)
    _verify_ssh(layout)
    ssh_lab = sshlab.up(layout)
    preset = write_preset(layout)
    _say(f"up in {time.monotonic() - t0:.1f}s; preset {preset}")
    return Testbed(
        ssh_host="127.0.0.1",
        ssh_port=layout.ssh_port,
        user=layout.user,
        key_file=layout.key_file,
        known_hosts=layout.known_hosts,
        workdir=str(layout.workdir),
        slurm_conf=layout.slurm_conf,
        base_dir=layout.base,
        preset_file=preset,
        blender=blender,
        ssh_lab=ssh_lab,
    )


def _cancel_jobs(layout: Layout) -> None:
    """Cancel every job of the testbed cluster, so no slurmstepd outlives slurmd."""
    if not _is_running(_load_state(layout).get("slurmctld", {}).get("pid"), "slurmctld"):
        return
    jobs = _slurm_cmd(layout, "squeue", "-h", "-o", "%i").stdout.split()
    if not jobs:
        return
    _slurm_cmd(layout, "scancel", *jobs)
    _wait_for(lambda: not _slurm_cmd(layout, "squeue", "-h", "-t", "R,CG", "-o", "%i").stdout.strip(), 20.0, 0.5)


def down(purge: bool = False) -> None:
    """Stop the daemons this testbed started (by recorded pid, newest first) and clean up.

    Kept for a fast next `up`: installed packages, the user account, the key pairs, the MariaDB
    data and the bpy site dir (and the logs). `purge=True` also removes the base dir and the
    user's home directory.
    """
    layout = Layout.from_env()
    sshlab.down(layout)  # first: it also edits state.json, which is loaded next
    gridengine.down(layout)  # likewise; deletes its jobs first
    state = _load_state(layout)
    if layout.slurm_conf.exists():
        _cancel_jobs(layout)
    stopped: list[int] = []
    for daemon in reversed(DAEMONS):
        entry = state.get(daemon)
        if not entry or not entry.get("owned", True):
            continue
        _stop_pid(int(entry["pid"]), daemon)
        stopped.append(int(entry["pid"]))
        state.pop(daemon)
        _save_state(layout, state)  # a failure later still leaves an accurate record
        _remove_runtime_files(layout, daemon)
    layout.state_file.unlink(missing_ok=True)
    nodens.remove()
    # Dead daemons are zombies until their parent (init, or a long-lived caller) reaps them; some
    # container inits reap only every few seconds. Give them a moment so `pgrep` right after
    # `down` is clean, but a zombie is harmless: never fail on it.
    _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in stopped), 5.0, 0.2)
    try:
        preset_path().unlink(missing_ok=True)
    except ImportError as exc:  # braas_hpc not importable: nothing could have been written
        _say(f"cannot locate the preset: {exc}")
    if purge:
        shutil.rmtree(layout.base, ignore_errors=True)
        shutil.rmtree(layout.home, ignore_errors=True)


def _remove_runtime_files(layout: Layout, daemon: str) -> None:
    layout.pid_file(daemon).unlink(missing_ok=True)
    if daemon == "mariadbd":
        layout.mysql_socket.unlink(missing_ok=True)
    if daemon == "munged":
        for sock in Path("/run/munge").glob("munge.socket*"):
            sock.unlink(missing_ok=True)


def _listening(pid: int) -> list[str]:
    """TCP/unix listening addresses of a process, from `ss`."""
    proc = _run(["ss", "-ltxnpH"], check=False, timeout=10)
    found = []
    for line in proc.stdout.splitlines():
        if f"pid={pid}," in line:
            netid, _state, _recv, _send, local = line.split()[:5]
            found.append(local if netid == "tcp" else f"unix:{local}")
    return sorted(set(found))


def status() -> int:
    """Print one line per daemon; 0 when all of them run and slurmctld has both nodes usable, else 1."""
    layout = Layout.from_env()
    state = _load_state(layout)
    all_up = True
    ctld_up = _is_running(state.get("slurmctld", {}).get("pid"), "slurmctld")
    for daemon in DAEMONS:
        entry = state.get(daemon, {})
        pid = entry.get("pid")
        running = _is_running(pid, daemon)
        all_up &= running
        where = ", ".join(_listening(pid) or nodens.listening(pid)) if running else ""
        owner = "" if entry.get("owned", True) else " (not started by the testbed)"
        if running and daemon in node_daemons() and ctld_up:  # a slurmd runs, but is its node usable?
            node = node_daemons()[daemon].slurm_name
            node_state = _node_state(layout, node)
            where += f" (node {node} {node_state or 'unknown to slurmctld'})"
            all_up &= node_state in _USABLE_NODE_STATES
        print(f"{daemon:10} {'running' if running else 'stopped':8} pid={pid or '-':<8} {where}{owner}")
    nodes_ok, node_lines = nodens.status_lines()
    print("\n".join(node_lines))
    lab_ok = sshlab.status(layout)  # printed whatever the nodes' state
    sge_ok = gridengine.status(layout)
    all_up &= nodes_ok and lab_ok and sge_ok
    return 0 if all_up else 1


def state() -> dict:
    """The recorded daemons, for tests that want to inspect them."""
    return _load_state(Layout.from_env())


__all__ = ["Testbed", "TestbedError", "down", "state", "status", "up"]
