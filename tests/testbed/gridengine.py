"""Son of Grid Engine 8.1.9 (Debian's gridengine packages) beside Slurm: one sge_qmaster and one sge_execd on
this host, a queue `all.q`, a parallel environment `smp` and a consumable `gpu`, accounting for `qacct`.

The Debian packages are installed without their own cluster (debconf `shared/gridengineconfig=false`); this
module builds a cell of its own under `<base>/sge`, which is SGE_ROOT: `bin`, `lib`, `util`, `utilbin` are
links to Debian's, `default/common` is the cell (bootstrap, act_qmaster, accounting, settings.sh) and
`spool/` holds the qmaster's classic (plain file) spool and the execd's spool. The cell is built from the
templates written here; when they change (their hash differs from `config.hash`) the cell is rebuilt.

Daemons are recorded in the testbed's state.json as `sge_qmaster` and `sge_execd` (their /proc/PID/comm).
Only stdlib at import time, like testbed.py.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

if __package__:
    from . import testbed as tb
else:  # imported as plain `gridengine`, beside plain `testbed` (the command-line script)
    import testbed as tb

APT_PACKAGES = ("gridengine-master", "gridengine-exec", "gridengine-client")
# Without this the packages build a cell in /var/lib/gridengine; ours lives under the testbed's base dir.
DEBCONF_SELECTIONS = "gridengine-common shared/gridengineconfig boolean false\n"

CELL = "default"
QUEUE = "all.q"
PE = "smp"
SLOTS = 4  # more than this machine's CPUs: small array jobs run side by side, as on a real node
GPUS = 2  # a consumable `gpu` on the host, like Slurm's fake GRES: a real request that can queue
QMASTER_PORT = 6444  # /etc/services (netbase): sge-qmaster, sge-execd
EXECD_PORT = 6445
DAEMONS = ("sge_qmaster", "sge_execd")  # start order; down() walks it backwards

LIBEXEC = Path("/usr/lib/gridengine")  # Debian's real binaries
DEBIAN_ROOT = Path("/var/lib/gridengine")
SHARE = Path("/usr/share/gridengine")
ADMIN_USER = "sgeadmin"  # created by gridengine-common

START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Paths:
    base: Path

    @property
    def root(self) -> Path:  # SGE_ROOT
        return self.base / "sge"

    @property
    def common(self) -> Path:
        return self.root / CELL / "common"

    @property
    def qmaster_spool(self) -> Path:
        return self.root / "spool" / "qmaster"

    @property
    def execd_spool(self) -> Path:
        return self.root / "spool" / "execd"

    @property
    def templates(self) -> Path:
        return self.root / "templates"

    @property
    def hash_file(self) -> Path:
        return self.root / "config.hash"

    @property
    def accounting(self) -> Path:
        return self.common / "accounting"

    @property
    def settings(self) -> Path:
        return self.common / "settings.sh"

    @property
    def mail_log(self) -> Path:
        return self.root / "mail" / "mail.log"

    def execd_dir(self) -> Path:
        # The execd names its spool dir by the name it resolves itself to (here often `localhost`): find it.
        found = sorted(p.parent for p in self.execd_spool.glob("*/messages"))
        return found[0] if found else self.execd_spool / "localhost"

    def log(self, daemon: str) -> Path:
        return {"sge_qmaster": self.qmaster_spool, "sge_execd": self.execd_dir()}[daemon] / "messages"

    def pid_file(self, daemon: str) -> Path:
        return {"sge_qmaster": self.qmaster_spool / "qmaster.pid", "sge_execd": self.execd_dir() / "execd.pid"}[daemon]

    def console(self, daemon: str) -> Path:
        return self.root / f"{daemon}.console.log"


def _paths(layout: tb.Layout) -> Paths:
    return Paths(layout.base)


def host() -> str:
    """The execution and submit host's name: this machine's, as Grid Engine sees it."""
    return socket.gethostname().split(".")[0]


@functools.cache
def arch() -> str:
    """Grid Engine's name for this platform (lx-amd64): the directory its binaries are in under SGE_ROOT/bin."""
    return tb._run([str(DEBIAN_ROOT / "util" / "arch")], timeout=10).stdout.strip()


def client_env(layout: tb.Layout) -> dict[str, str]:
    """Environment for root's qconf/qstat/qdel calls and the daemons (jobs inherit the execd's)."""
    root = _paths(layout).root
    return {
        "SGE_ROOT": str(root),
        "SGE_CELL": CELL,
        # SGE's own commands first (as on a Grid Engine node: `qrsh -inherit` inside a job), then the testbed's.
        "PATH": f"{root}/bin/{arch()}:{layout.session_path}:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "HOME": "/root",
    }


def qcmd(layout: tb.Layout, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run one of Grid Engine's commands as root (a manager of the cell)."""
    return tb._run([str(LIBEXEC / args[0]), *args[1:]], check=check, env=client_env(layout), timeout=timeout)


# --------------------------------------------------------------------------------------------
# the cell: templates, hash, spool initialisation


def _global_configuration(paths: Paths) -> str:
    text = (SHARE / "default-configuration").read_text()
    replace = {
        "execd_spool_dir": str(paths.execd_spool),
        # accounting lines written at once, so `qacct -j` answers as soon as a task ended
        "reporting_params": "accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00 "
                            "accounting_flush_time=00:00:00",
        # mail (-m/-M) goes to a file, not to a mail system that would leave a queue runner behind
        "mailer": str(paths.root / "mail" / "mailer"),
        "load_report_time": "00:00:05",
    }
    lines = []
    for line in text.splitlines():
        key = line.split(None, 1)[0] if line.strip() else ""
        lines.append(f"{key:<23}{replace[key]}" if key in replace else line)
    return "\n".join(lines) + "\n"


def _queue(h: str) -> str:
    # load_thresholds NONE: the shared machine's load must not put the queue in alarm state.
    # shell /bin/sh + posix_compliant are Debian's (and SGE's) defaults: a script's #! line is ignored
    # unless the job says -S, as on most sites.
    return f"""\
qname                 {QUEUE}
hostlist              {h}
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               {PE}
rerun                 FALSE
slots                 {SLOTS}
tmpdir                /tmp
shell                 /bin/sh
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
""" + "".join(f"{limit:<22}INFINITY\n" for limit in (
        "s_rt", "h_rt", "s_cpu", "h_cpu", "s_fsize", "h_fsize", "s_data", "h_data", "s_stack", "h_stack",
        "s_core", "h_core", "s_rss", "h_rss", "s_vmem", "h_vmem"))


def _exechost(h: str) -> str:
    return f"""\
hostname              {h}
load_scaling          NONE
complex_values        gpu={GPUS}
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
"""


# name shortcut type relop requestable consumable default urgency
GPU_COMPLEX = "name gpu\nshortcut gpu\ntype INT\nrelop <=\nrequestable YES\nconsumable YES\ndefault 0\nurgency 0\n"

# The scheduler looks every second and right after a submit or an end (defaults: every 15 s, no flush).
SCHED_CONFIGURATION = """\
algorithm                         default
schedule_interval                 0:0:1
maxujobs                          0
queue_sort_method                 load
job_load_adjustments              NONE
load_adjustment_decay_time        0:0:0
load_formula                      np_load_avg
schedd_job_info                   true
flush_submit_sec                  1
flush_finish_sec                  1
params                            none
reprioritize_interval             0:0:0
halftime                          168
usage_weight_list                 cpu=1.000000,mem=0.000000,io=0.000000
compensation_factor               5.000000
weight_user                       0.250000
weight_project                    0.250000
weight_department                 0.250000
weight_job                        0.250000
weight_tickets_functional         0
weight_tickets_share              0
share_override_tickets            TRUE
share_functional_shares           TRUE
max_functional_jobs_to_schedule   200
report_pjob_tickets               TRUE
max_pending_tasks_per_job         50
halflife_decay_list               none
policy_hierarchy                  OFS
weight_ticket                     0.500000
weight_waiting_time               0.278000
weight_deadline                   3600000.000000
weight_urgency                    0.500000
weight_priority                   0.000000
max_reservation                   0
default_duration                  INFINITY
"""


def _templates(paths: Paths) -> dict[str, str]:
    """Every file the cell is built from, by path relative to the templates dir (their hash is the config's)."""
    h = host()
    centry = SHARE / "util" / "resources" / "centry"
    return {
        "bootstrap": _bootstrap(paths),
        "configuration": _global_configuration(paths),
        "sched_configuration": SCHED_CONFIGURATION,
        **{f"complexes/{f.name}": f.read_text() for f in sorted(centry.iterdir())},
        "complexes/gpu": GPU_COMPLEX,
        "hosts/" + h: f"hostname {h}\n",
        "exechosts/" + h: _exechost(h),
        "cqueues/" + QUEUE: _queue(h),
        "pes/" + PE: (SHARE / "util" / "resources" / "pe" / PE).read_text(),
    }


def _bootstrap(paths: Paths) -> str:
    return f"""\
admin_user              {ADMIN_USER}
default_domain          none
ignore_fqdn             true
spooling_method         classic
spooling_lib            libspoolc
spooling_params         {paths.common};{paths.qmaster_spool}
binary_path             {LIBEXEC}
qmaster_spool_dir       {paths.qmaster_spool}
security_mode           none
listener_threads        2
worker_threads          2
scheduler_threads       1
"""


def _config_hash(templates: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(templates):
        digest.update(f"{name}\0{templates[name]}\0".encode())
    return digest.hexdigest()[:16]


def _settings_sh(paths: Paths, arch_name: str) -> str:
    # What a Grid Engine site gives its users to source: SGE's commands first on PATH.
    return (f"SGE_ROOT={paths.root}; export SGE_ROOT\nSGE_CELL={CELL}; export SGE_CELL\n"
            f"SGE_ARCH={arch_name}; export SGE_ARCH\nPATH=$SGE_ROOT/bin/$SGE_ARCH:$PATH; export PATH\n")


def _as_admin(layout: tb.Layout, *cmd: str) -> None:
    tb._run(["runuser", "-u", ADMIN_USER, "--", *cmd], env=client_env(layout), timeout=60)


def build_cell(layout: tb.Layout) -> bool:
    """Write the cell and initialise the qmaster's spool when missing or built from other templates.

    Returns True when it (re)built the cell (the daemons must then be started afresh)."""
    paths = _paths(layout)
    templates = _templates(paths)
    want = _config_hash(templates)
    have = paths.hash_file.read_text().strip() if paths.hash_file.exists() else ""
    if have == want and (paths.qmaster_spool / "managers").exists():
        _write_cell_files(paths)  # refreshed on every up, like the PBS stand-in (content only: no restart needed)
        return False
    tb._say(f"building the Grid Engine cell in {paths.root}")
    down(layout)  # daemons of the old cell, if any
    shutil.rmtree(paths.root, ignore_errors=True)
    for d in (paths.common, paths.qmaster_spool / "job_scripts", paths.execd_spool, paths.templates):
        d.mkdir(parents=True, exist_ok=True)
    for name in ("bin", "lib", "util", "utilbin"):
        (paths.root / name).symlink_to(DEBIAN_ROOT / name)
    for name, text in templates.items():
        tb._write(paths.templates / name, text)
    _write_cell_files(paths)
    tb._run(["chown", "-R", f"{ADMIN_USER}:{ADMIN_USER}", str(paths.root / CELL), str(paths.root / "spool"),
             str(paths.templates)])
    libexec, tpl = str(LIBEXEC), paths.templates
    _as_admin(layout, f"{libexec}/spoolinit", "classic", "libspoolc", f"{paths.common};{paths.qmaster_spool}", "init")
    _as_admin(layout, f"{libexec}/spooldefaults", "configuration", str(tpl / "configuration"))
    for what, folder in (("complexes", "complexes"), ("usersets", None), ("adminhosts", "hosts"),
                         ("submithosts", "hosts"), ("exechosts", "exechosts"), ("pes", "pes")):
        source = tpl / folder if folder else SHARE / "util" / "resources" / "usersets"
        _as_admin(layout, f"{libexec}/spooldefaults", what, str(source))
    _as_admin(layout, f"{libexec}/spooldefaults", "managers", "root", ADMIN_USER)
    tb._write(paths.hash_file, want + "\n")
    return True


def _write_cell_files(paths: Paths) -> None:
    h = host()
    tb._write(paths.common / "bootstrap", _bootstrap(paths))
    tb._write(paths.common / "act_qmaster", h + "\n")
    # Loopback resolves back to `localhost` here, not to the host name the daemons call themselves, and
    # Grid Engine refuses a client whose names differ ("access denied ... not identical"): one host.
    tb._write(paths.common / "host_aliases", f"{h} localhost\n" if h != "localhost" else "localhost\n")
    arch_name = arch()
    tb._write(paths.settings, _settings_sh(paths, arch_name))
    tb._write(paths.common / "settings.csh",
              f"setenv SGE_ROOT {paths.root}\nsetenv SGE_CELL {CELL}\nsetenv SGE_ARCH {arch_name}\n"
              f"set path = ( $SGE_ROOT/bin/$SGE_ARCH $path )\n")
    mail = paths.mail_log.parent
    mail.mkdir(parents=True, exist_ok=True)
    os.chmod(mail, 0o1777)  # the mailer runs as the job's owner
    tb._write(mail / "mailer", f'#!/bin/sh\n# Grid Engine mailer of the test cluster: appends to a file.\n'
              f'{{ echo "== to: $*"; cat; echo; }} >> {paths.mail_log}\n', 0o755)


# --------------------------------------------------------------------------------------------
# daemons


def _record(layout: tb.Layout, daemon: str, pid: int) -> None:
    state = tb._load_state(layout)
    state[daemon] = {"pid": pid, "log": str(_paths(layout).log(daemon)), "owned": True}
    tb._save_state(layout, state)


def _error(layout: tb.Layout, daemon: str, what: str) -> tb.TestbedError:
    paths = _paths(layout)
    parts = [f"{daemon}: {what}"]
    for path in (paths.log(daemon), paths.console(daemon)):
        if path.exists() and path.stat().st_size:
            parts += [f"--- last lines of {path} ---", tb._tail(path)]
    return tb.TestbedError("\n".join(parts))


def _start(layout: tb.Layout, daemon: str) -> int:
    """Start a daemon the Grid Engine way (it forks into the background) and return its pid from its pid file."""
    paths = _paths(layout)
    paths.pid_file(daemon).unlink(missing_ok=True)
    console = paths.console(daemon)
    with open(console, "ab") as out:
        # The parent exits once the daemon has forked; the daemon keeps no pipe of ours open.
        proc = subprocess.Popen([str(LIBEXEC / daemon)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=client_env(layout), start_new_session=True, close_fds=True, cwd="/")
        try:
            rc = proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise _error(layout, daemon, "did not go into the background in time") from None
    if rc != 0:
        raise _error(layout, daemon, f"exited with status {rc} while starting")
    pid = None

    def has_pid() -> bool:
        nonlocal pid
        pid = tb._read_pid(paths.pid_file(daemon))
        return tb._is_running(pid, daemon)

    if not tb._wait_for(has_pid, START_TIMEOUT, 0.2) or pid is None:
        raise _error(layout, daemon, f"no running {daemon} named by {paths.pid_file(daemon)}")
    _record(layout, daemon, pid)
    return pid


def _qmaster_answers(layout: tb.Layout) -> bool:
    return qcmd(layout, "qconf", "-sss", check=False, timeout=15).returncode == 0


def queue_state(layout: tb.Layout) -> str | None:
    """The queue instance's state letters ('' when fine, 'u' while its execd is unknown), None when absent."""
    proc = qcmd(layout, "qstat", "-f", "-q", f"{QUEUE}@{host()}", check=False, timeout=15)
    for line in proc.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == f"{QUEUE}@{host()}":
            return fields[5] if len(fields) > 5 else ""  # queuename qtype resv/used/tot load arch [states]
    return None


def _adopt(layout: tb.Layout, daemon: str) -> bool:
    """Record a daemon of this cell that runs unrecorded (state.json removed by an older testbed's `down`)."""
    pid = tb._read_pid(_paths(layout).pid_file(daemon))
    if not tb._is_running(pid, daemon):
        return False
    _record(layout, daemon, pid)
    return True


def start_qmaster(layout: tb.Layout) -> None:
    if not tb._recorded_running(layout, "sge_qmaster") and not _adopt(layout, "sge_qmaster"):
        if tb._port_open(QMASTER_PORT):
            raise _error(layout, "sge_qmaster", f"port {QMASTER_PORT} is taken by a process this testbed did not "
                         "start (see `ss -ltnp`)")
        _start(layout, "sge_qmaster")
    if not tb._wait_for(lambda: _qmaster_answers(layout), START_TIMEOUT, 0.25):
        raise _error(layout, "sge_qmaster", "`qconf -sss` got no answer in time")


def start_execd(layout: tb.Layout) -> None:
    if not tb._recorded_running(layout, "sge_execd") and not _adopt(layout, "sge_execd"):
        if tb._port_open(EXECD_PORT):
            raise _error(layout, "sge_execd", f"port {EXECD_PORT} is taken by a process this testbed did not start")
        _start(layout, "sge_execd")
    # The queue instance leaves state 'u' (unknown) once the execd has sent its first load report.
    if not tb._wait_for(lambda: queue_state(layout) == "", START_TIMEOUT, 0.25):
        raise _error(layout, "sge_execd", f"queue {QUEUE}@{host()} is not usable (state {queue_state(layout)!r})")


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _delete_jobs(layout: tb.Layout) -> None:
    """Delete every job, so no shepherd (and no job) outlives the execd."""
    if not _qmaster_answers(layout):
        return
    if not qcmd(layout, "qstat", "-u", "*", check=False).stdout.strip():
        return
    qcmd(layout, "qdel", "-f", "-u", "*", check=False)
    tb._wait_for(lambda: not qcmd(layout, "qstat", "-u", "*", check=False).stdout.strip(), 20.0, 0.5)


def _stop_execd(pid: int) -> None:
    shepherds = _children(pid)
    tb._stop_pid(pid, "sge_execd")
    for shepherd in shepherds:  # a job that survived qdel: its shepherd and what it runs
        try:
            os.killpg(os.getpgid(shepherd), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# --------------------------------------------------------------------------------------------
# public API (called from testbed.up/down/status)


def ensure_queue(layout: tb.Layout) -> None:
    """The queue and the scheduler's pace, set through the running qmaster: a queue spooled before its first
    start gets no queue instance, and the qmaster writes its default scheduler configuration over ours."""
    paths = _paths(layout)
    if not (paths.qmaster_spool / "cqueues" / QUEUE).exists():
        qcmd(layout, "qconf", "-Aq", str(paths.templates / "cqueues" / QUEUE))
    spooled = paths.common / "sched_configuration"
    if "schedule_interval 0:0:1\n" not in (spooled.read_text() if spooled.exists() else ""):
        qcmd(layout, "qconf", "-Msconf", str(paths.templates / "sched_configuration"))


def up(layout: tb.Layout) -> None:
    """Build the cell (once) and start both daemons; re-uses what runs."""
    build_cell(layout)
    start_qmaster(layout)
    ensure_queue(layout)
    start_execd(layout)


def down(layout: tb.Layout) -> None:
    """Delete all jobs, stop the execd and the qmaster by recorded pid."""
    state = tb._load_state(layout)
    if "sge_qmaster" in state and tb._is_running(state["sge_qmaster"].get("pid"), "sge_qmaster"):
        _delete_jobs(layout)
    for daemon in reversed(DAEMONS):
        entry = state.get(daemon)
        if not entry:
            continue
        if daemon == "sge_execd":
            _stop_execd(int(entry["pid"]))
        else:
            tb._stop_pid(int(entry["pid"]), daemon)
        state.pop(daemon)
        tb._save_state(layout, state)
        _paths(layout).pid_file(daemon).unlink(missing_ok=True)


def status(layout: tb.Layout) -> bool:
    """One line per daemon (the execd's with its queue's state); True when both run and the queue is usable."""
    state = tb._load_state(layout)
    all_up = True
    for daemon in DAEMONS:
        pid = state.get(daemon, {}).get("pid")
        running = tb._is_running(pid, daemon)
        label, where = ("running" if running else "stopped"), (", ".join(tb._listening(pid)) if running else "")
        if running and daemon == "sge_execd":  # it runs, but can the queue take jobs?
            qstate = queue_state(layout)
            where += f" (queue {QUEUE}@{host()} " + ("absent" if qstate is None else (qstate or "ok")) + ")"
            running = qstate == ""
            label = label if running else "unusable"
        all_up &= running
        print(f"{daemon:11} {label:8} pid={pid or '-':<8} {where}")
    return all_up


__all__ = ["APT_PACKAGES", "CELL", "DEBCONF_SELECTIONS", "PE", "QUEUE", "client_env", "down", "qcmd", "status", "up"]
