"""`braas-hpc test PRESET`: connect, run a probe, report what the cluster offers."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .presets import load_preset
from .schedulers import scheduler_for
from .transport import transport_for

# Prints the names of the commands given ($@) that the login node has. The names are the scheduler's
# constants and "blender": no user value is ever part of it.
_PROBE = 'for c in "$@"; do command -v "$c" >/dev/null 2>&1 && printf "%s " "$c"; done'


@dataclass(frozen=True)
class ProbeReport:
    preset: str
    backend: str
    host: str
    connect_ms: float
    command_ms: float
    node: str
    arch: str
    commands: tuple[str, ...]
    workdir: str
    workdir_ok: bool

    def to_json(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


async def probe(preset_name: str, backend: str | None = None) -> ProbeReport:
    preset = load_preset(preset_name)
    transport = transport_for(preset, backend)
    started = time.perf_counter()
    await transport.connect()
    connected = time.perf_counter()
    uname = (await transport.run(["uname", "-nm"])).stdout.split()
    command_ms = (time.perf_counter() - connected) * 1000
    wanted = [*scheduler_for(preset.scheduler).commands, "blender"]
    found = (await transport.run(["sh", "-c", _PROBE, "sh", *wanted])).stdout.split()
    workdir = preset.workdir or "~"
    ok = (await transport.run(["test", "-d", workdir, "-a", "-w", workdir], check=False)).exit_status == 0
    return ProbeReport(preset.name, transport.name, preset.host or "localhost", (connected - started) * 1000,
                       command_ms, uname[0] if uname else "?", uname[1] if len(uname) > 1 else "?", tuple(found),
                       workdir, ok)
