"""Is a preset ready to submit? What this computer can tell at once (`braas-hpc presets`), and what only
the cluster can say (`braas-hpc doctor PRESET`): each check with what was found and, when it fails, what
to do. Advice names the user's own preset file, or the command that writes one, never a file inside the
installed package."""

from __future__ import annotations

import logging
import posixpath
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .cluster_blender import installed_blender
from .errors import AuthenticationFailed, BraasError, ConnectionFailed, HostKeyError, PresetError
from .presets import Preset, load_preset
from .schedulers import scheduler_for
from .scripts import MANIFEST, remote_digests, scripts_place, scripts_version, shipped_digests
from .store import HashCache
from .transport import sshconfig, target_for, transport_for
from .transport.hostkeys import known_hosts_path, recorded_keys
from .tree import remote_root
from .user_presets import how_to_set

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    what: str  # "account", "workdir", "host key", "login", "scripts", "blender"
    ok: bool | None  # None: fine as far as this computer knows; the cluster has the last word
    found: str
    fix: str = ""
    facts: tuple[str, ...] = ()  # facts of the preset (presets.FACTS) this check confirmed on the site

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "facts": list(self.facts)}


def local_checks(preset: Preset, cache: HashCache | None = None) -> list[Check]:
    """What this computer knows without asking the cluster: fast, for every preset at once."""
    if preset.is_local:
        return []
    checks = []
    if preset.account_required and not preset.account:
        checks.append(Check("account", False, "none set; the site charges every job to a project",
                            how_to_set(preset, "account", "PROJECT")))
    elif preset.account:
        checks.append(Check("account", None, preset.account))
    if not preset.workdir:
        hint = f"; the site documents {preset.workdir_hint}" if preset.workdir_hint else ""
        checks.append(Check("workdir", False, f"none set{hint}",
                            f"braas-hpc workdir {preset.name} lists candidates, then "
                            + how_to_set(preset, "workdir", "PATH")))
    else:
        checks.append(Check("workdir", None, preset.workdir))
    host, port, known = _host_key_place(preset)
    if recorded_keys(known, host, port):
        checks.append(Check("host key", True, f"recorded in {known}"))
    else:
        named = preset.host if host == preset.host else f"{preset.host} ({host})"
        checks.append(Check("host key", False, f"{named} is not in {known}",
                            f"braas-hpc test {preset.name} shows its fingerprint and records it on your yes"))
    if preset.workdir:
        seen = (cache or HashCache()).scripts_seen(scripts_place(preset, remote_root(preset)))
        if seen == scripts_version():
            checks.append(Check("scripts", True, f"release {seen} installed"))
        else:
            checks.append(Check("scripts", None, f"release {seen} seen; the next submit updates them" if seen
                                else "not seen from this computer; the first submit installs them"))
    installed = installed_blender(preset.name)
    if installed is not None:
        checks.append(Check("blender", True, f"{installed.blender} {installed.version}".strip()))
    elif preset.blender_note and preset.blender == "blender":
        checks.append(Check("blender", False, preset.blender_note,
                            f"braas-hpc install {preset.name} --blender-path PATH (or --blender-upload ARCHIVE)"))
    else:
        checks.append(Check("blender", None, f"`{preset.blender}` on the login node's PATH"))
    return checks


def _host_key_place(preset: Preset) -> tuple[str, int, Path]:
    """Where a connection looks the cluster's key up: the host, port and known_hosts file your ssh config
    makes of the preset's host (an alias there names another machine), as the back ends resolve them."""
    target = target_for(preset)
    try:
        final = sshconfig.resolve(target)[-1]
    except (PresetError, OSError) as error:  # the connection will say what is wrong; here the preset's words
        log.debug("ssh config not read for %s: %s", preset.name, error)
        return preset.host, preset.port, known_hosts_path(target.known_hosts)
    return final.hostname, final.port, known_hosts_path(final.known_hosts_for(target))


def summary(checks: list[Check]) -> str:
    """One cell of `braas-hpc presets`: "ready", or what needs doing."""
    failed = [c.what for c in checks if c.ok is False]
    return "needs " + ", ".join(failed) if failed else "ready"


# Prints the accounts Slurm lets this user charge, one per line (nothing where sacctmgr is not there).
_SLURM_ACCOUNTS = ('command -v sacctmgr >/dev/null 2>&1 || exit 0; '
                   'sacctmgr --noheader --parsable2 show associations where user="$(id -un)" format=account')


async def doctor(preset_name: str, backend: str | None = None) -> list[Check]:
    """Every local check, then the cluster's answers: the login, the account, the working directory,
    the installed scripts, Blender. Stops after a failed login (nothing else can be asked)."""
    preset = load_preset(preset_name)
    if preset.is_local:
        return [Check("local", True, "renders on this computer: nothing to set up")]
    local = {c.what: c for c in local_checks(preset)}  # what the cluster cannot answer better is kept
    transport = transport_for(preset, backend)
    started = time.perf_counter()
    try:
        await transport.connect()
    except HostKeyError as exc:
        return [local["host key"], Check("login", False, str(exc), f"braas-hpc test {preset.name} (in a terminal)")]
    except AuthenticationFailed as exc:
        return [local["host key"], Check("login", False, str(exc), "check user (ssh config or the preset), key_file, "
                                         "and that the key is registered with the site; a one-time code is asked "
                                         "in a terminal")]
    except ConnectionFailed as exc:
        return [local["host key"], Check("login", False, str(exc), "check the network: a VPN the site requires, a "
                                         "proxy (proxy_jump, or ProxyJump in ~/.ssh/config), the host name and port")]
    checks = [Check("host key", True, "verified"),
              Check("login", True, f"{transport.name} in {(time.perf_counter() - started) * 1000:.0f} ms")]
    if preset.scheduler == "slurm":
        checks.append(await _slurm_account(transport, preset))
    else:  # only Slurm lists a user's accounts: what this computer knows
        checks.append(local.get("account", Check("account", None, "none set")))
    checks.append(await _workdir(transport, preset) if preset.workdir else local["workdir"])
    if preset.workdir:
        checks.append(await _scripts(transport, preset))
    checks.append(await _blender(transport, preset))
    checks.extend(await site_checks(transport, preset))
    return [*checks, facts_check(preset, checks)]


async def _slurm_account(transport, preset: Preset) -> Check:  # noqa: ANN001
    done = await transport.run(["sh", "-c", _SLURM_ACCOUNTS], check=False)
    mine = sorted({line.strip() for line in done.stdout.splitlines() if line.strip()})
    if not preset.account:
        ok = False if preset.account_required else None
        return Check("account", ok, f"none set; yours: {', '.join(mine) or 'not listed'}",
                     how_to_set(preset, "account", mine[0] if mine else "PROJECT") if ok is False else "")
    if not mine:
        return Check("account", None, f"{preset.account} (the site does not list accounts)")
    if preset.account.lower() in (m.lower() for m in mine):
        return Check("account", True, preset.account)
    return Check("account", False, f"{preset.account} is not one of yours: {', '.join(mine)}",
                 how_to_set(preset, "account", mine[0]))


async def _workdir(transport, preset: Preset) -> Check:  # noqa: ANN001
    done = await transport.run(["sh", "-c", 'test -d "$1" && test -w "$1"', "sh", preset.workdir], check=False)
    if done.exit_status == 0:
        return Check("workdir", True, f"{preset.workdir} (writable)")
    return Check("workdir", False, f"{preset.workdir} is missing or not writable for you",
                 f"braas-hpc workdir {preset.name} lists candidates, then " + how_to_set(preset, "workdir", "PATH"))


async def _scripts(transport, preset: Preset) -> Check:  # noqa: ANN001
    directory = posixpath.join(remote_root(preset), "scripts", scripts_version())
    wanted = shipped_digests()
    present = await remote_digests(transport, directory, [*sorted(wanted), MANIFEST])
    stale = [name for name, digest in wanted.items() if present.get(name) != digest]
    if not stale and MANIFEST in present:
        return Check("scripts", True, f"release {scripts_version()} in {directory}")
    return Check("scripts", None, f"release {scripts_version()} not (all) installed; the next submit installs it",
                 f"or now: braas-hpc install {preset.name}")


async def _blender(transport, preset: Preset) -> Check:  # noqa: ANN001
    installed = installed_blender(preset.name)
    command, env = (installed.blender, installed.env) if installed else (preset.blender, preset.env)
    script = "\n".join([*env, f'{command} --version 2>/dev/null | head -n 1'])
    try:
        done = await transport.run(["bash", "-lc", script], check=False, timeout=120)
    except BraasError as exc:
        return Check("blender", False, f"`{command}` did not answer: {exc}", f"braas-hpc install {preset.name}")
    # A login shell may print the site's banner first: the version is the line that starts "Blender".
    line = next((text.strip() for text in done.stdout.splitlines() if text.startswith("Blender")), "")
    if line:
        return Check("blender", True, f"{line} ({command})", facts=("blender",))
    return Check("blender", False, f"`{command}` does not run on the login node",
                 f"braas-hpc install {preset.name} --blender-url URL --blender-sha256 HEX (or --blender-path PATH)")


# ---- what a login node can tell about the preset's site facts: queues, the GPU partition, module lines ----

# Partition|available|time limit, one line each (Slurm prints "infinite" or [days-]hours:minutes:seconds).
_SINFO = ["sinfo", "--noheader", "--format=%R|%a|%l"]
_SLURM_QOS = ["sacctmgr", "--noheader", "--parsable2", "show", "qos", "format=name"]
_ENV_OK = "braas-hpc: the lines ran"


async def site_checks(transport, preset: Preset) -> list[Check]:  # noqa: ANN001
    """The queues the preset names exist (with their limits), the GPU partition takes a GPU job, the module
    lines load in a login shell. Only Slurm and PBS Pro queues can be listed; other schedulers say so."""
    checks: list[Check] = []
    if preset.scheduler == "slurm":
        site = parse_sinfo((await transport.run(_SINFO, check=False)).stdout)
        qos = set((await transport.run(["sh", "-c", " ".join(_SLURM_QOS) + " 2>/dev/null"], check=False))
                  .stdout.split())
        checks.append(queues_check(preset, site, qos))
        if preset.partition_gpu and checks[-1].ok is not False:
            checks.append(await _slurm_gpu_test(transport, preset))
    elif preset.scheduler == "pbs":
        done = await transport.run(["qstat", "-Q"], check=False)
        site = parse_qstat_queues(done.stdout)
        checks.append(queues_check(preset, {name: (enabled, None) for name, enabled in site.items()}, set()))
    else:
        checks.append(Check("queues", None, f"not listed on {preset.scheduler} (only Slurm and PBS Pro queues are)"))
    checks.append(await _modules(transport, preset))
    return checks


def _queue_names(preset: Preset) -> dict[str, str]:
    """The site's name of every partition or queue the preset sends jobs to, by its key in the preset."""
    if not preset.partitions:
        return {name: name for name in (preset.partition_cpu, preset.partition_gpu) if name}
    if "--partition" in preset.drop_directives:  # the keys are QoS names (MareNostrum 5): no partition is sent
        return {}
    return {key: part.partition or key for key, part in preset.partitions.items()}


def parse_sinfo(text: str) -> dict[str, tuple[bool, int | None]]:
    """`sinfo --format=%R|%a|%l` as {partition: (up, walltime limit in minutes or None for infinite)}."""
    site: dict[str, tuple[bool, int | None]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0]:
            site[parts[0]] = (parts[1] == "up", slurm_minutes(parts[2]))
    return site


def slurm_minutes(limit: str) -> int | None:
    """A Slurm time limit ("2-00:00:00", "30:00", "infinite") in minutes; None when unlimited or unreadable."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", limit.strip())
    if not match:
        return None
    days, first, second, third = (int(g) if g else 0 for g in match.groups())
    if match.group(4) is not None:  # [d-]h:m:s
        return days * 1440 + first * 60 + second
    if match.group(3) is not None:  # m:s, or d-h:m
        return days * 1440 + first * 60 + second if match.group(1) else first
    return days * 1440 + first * 60 if match.group(1) else first  # d-h, or plain minutes


def parse_qstat_queues(text: str) -> dict[str, bool]:
    """`qstat -Q` (PBS Pro) as {queue: enabled and started}."""
    queues: dict[str, bool] = {}
    started = False
    for line in text.splitlines():
        if line.startswith("---"):
            started = True
            continue
        words = line.split()
        if started and len(words) >= 5:
            queues[words[0]] = words[3] == "yes" and words[4] == "yes"
    return queues


def queues_check(preset: Preset, site: dict[str, tuple[bool, int | None]], qos: set[str]) -> Check:
    """Each queue the preset names against the site's list: missing or down fails; a walltime limit below the
    preset's fails (a job would be refused); the same limit confirms it."""
    if not site:
        return Check("queues", None, "the site listed no queues to this login")
    names = _queue_names(preset)
    missing = sorted(key for key, name in names.items() if name not in site)
    down = sorted(key for key, name in names.items() if name in site and not site[name][0])
    wanted_qos = sorted({part.qos for part in preset.partitions.values() if part.qos})
    missing += [f"QoS {q}" for q in wanted_qos if qos and q not in qos]
    shorter, same = [], []
    for key, name in names.items():
        limit = site.get(name, (True, None))[1]
        ours = preset.partition(key).max_walltime_min
        if limit is not None and limit < ours:
            shorter.append(f"{key} allows {limit} min, the preset {ours}")
        elif limit == ours:
            same.append(f"walltime:{key}")
    facts = [*(["partitions"] if names and not missing and not down else []), *same]
    if missing or down or shorter:
        problems = ([f"not on the site: {', '.join(missing)}"] if missing else []) + \
                   ([f"not up: {', '.join(down)}"] if down else []) + shorter
        return Check("queues", False, "; ".join(problems) + f" (the site's: {', '.join(sorted(site))})",
                     f"choose another with --partition, or fix partitions in your own preset "
                     f"(braas-hpc presets add {preset.name} --base ...; see docs/presets.md)",
                     facts=tuple(same))
    found = ", ".join(names.values()) if names else "none sent as partitions"
    qos_note = f"; QoS {', '.join(wanted_qos)}" + (" listed" if qos else " (not listed to you)") if wanted_qos else ""
    return Check("queues", True, f"{found}{qos_note}", facts=tuple(facts))


def _gpu_words(preset: Preset, gpus: int) -> list[str]:
    word = scheduler_for(preset.scheduler).gpu_request(preset)
    return {"gpus": [f"--gpus={gpus}"], "gres": [f"--gres=gpu:{gpus}"]}.get(word, [])


async def _slurm_gpu_test(transport, preset: Preset) -> Check:  # noqa: ANN001
    """`sbatch --test-only`: Slurm says whether it would take one task's GPUs on the GPU partition with this
    account and QoS, and when it would start; nothing is submitted."""
    key = preset.partition_gpu
    part = preset.partition(key)
    argv = ["sbatch", "--test-only", "--time=5", "--nodes=1", *_gpu_words(preset, max(part.gpus_per_task, 1))]
    if "--partition" not in preset.drop_directives:
        argv.append(f"--partition={part.partition or key}")
    if part.qos:
        argv.append(f"--qos={part.qos}")
    if preset.account:
        argv.append(f"--account={preset.account}")
    done = await transport.run([*argv, "--wrap=true"], check=False, timeout=60)
    said = " ".join((done.stderr + done.stdout).split())[:300]
    if done.exit_status == 0:
        return Check("gpu partition", True, f"{key} takes a GPU job ({said})", facts=("gpu_request",))
    gpus = max(part.gpus_per_task, 1)
    return Check("gpu partition", False, f"{key} refused a {gpus}-GPU test job: {said or 'no answer'}",
                 "check gpu_request and the partition's access rules with your site (the PI may have to ask "
                 "for GPU access), or set partition_gpu in your own preset")


async def _modules(transport, preset: Preset) -> Check:  # noqa: ANN001
    """The preset's env lines (module loads) run in a login shell, as a job runs them; the first failing line
    stops them (set -e), and the site's own message is shown."""
    installed = installed_blender(preset.name)
    env = installed.env if installed else preset.env
    sets = [tuple(env)] + ([tuple(preset.finish_env)] if preset.finish_env else [])
    if not any(sets):
        return Check("modules", True, "the preset loads no modules", facts=("modules",))
    for lines in sets:
        script = "\n".join(["set -e", *lines, f"echo '{_ENV_OK}'"])
        try:
            done = await transport.run(["bash", "-lc", script], check=False, timeout=120)
        except BraasError as exc:
            return Check("modules", False, f"the module lines did not finish: {exc}")
        if done.exit_status != 0 or _ENV_OK not in done.stdout:
            said = " ".join(done.stderr.split())[-300:] or f"exit status {done.exit_status}"
            return Check("modules", False, f"`{'; '.join(lines)}` failed: {said}",
                         "list the site's modules on the login node (`module avail`, `module spider rocm`) and "
                         "put the right lines in env of your own preset (docs/presets.md)")
    return Check("modules", True, "; ".join(line for lines in sets for line in lines), facts=("modules",))


def facts_check(preset: Preset, checks: list[Check]) -> Check:
    """Which of the preset's unconfirmed facts this login confirmed, and which only a render (or the site's
    support) can."""
    confirmed = {fact for check in checks if check.ok for fact in check.facts}
    done = [f for f in preset.unconfirmed if f in confirmed or f.partition(":")[0] in confirmed - {"walltime"}]
    left = [f for f in preset.unconfirmed if f not in done]
    if not preset.unconfirmed:
        return Check("site facts", True, "every fact of the preset has a source (docs/presets.md)")
    found = (f"confirmed here: {', '.join(done)}; " if done else "") + \
        (f"still unconfirmed: {', '.join(left)}" if left else "all confirmed")
    return Check("site facts", None if left else True, found,
                 "a one-frame test render confirms the rest (braas-hpc submit SCENE --preset "
                 f"{preset.name} --frames 1)" if left else "", facts=tuple(done))
