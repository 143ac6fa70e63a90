"""Is a preset ready to submit? What this computer can tell at once (`braas-hpc presets`), and what only
the cluster can say (`braas-hpc doctor PRESET`): each check with what was found and, when it fails, what
to do. Advice names the user's own preset file, or the command that writes one, never a file inside the
installed package."""

from __future__ import annotations

import logging
import posixpath
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .cluster_blender import installed_blender
from .errors import AuthenticationFailed, BraasError, ConnectionFailed, HostKeyError, PresetError
from .presets import Preset, load_preset
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

    def to_json(self) -> dict[str, object]:
        return asdict(self)


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
    try:
        final = sshconfig.resolve(target_for(preset))[-1]
    except (PresetError, OSError) as error:  # the connection will say what is wrong; here the preset's words
        log.debug("ssh config not read for %s: %s", preset.name, error)
        return preset.host, preset.port, known_hosts_path(preset.known_hosts or None)
    return final.hostname, final.port, known_hosts_path(preset.known_hosts or final.known_hosts or None)


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
    return checks


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
        return Check("blender", True, f"{line} ({command})")
    return Check("blender", False, f"`{command}` does not run on the login node",
                 f"braas-hpc install {preset.name} --blender-url URL --blender-sha256 HEX (or --blender-path PATH)")
