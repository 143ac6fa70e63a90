"""`braas-hpc install PRESET`: the cluster scripts (core.scripts), and optionally Blender
(core.cluster_blender), under `<workdir>/braas-hpc-<user>/`.

Blender comes from a download link (checked against its SHA-256), from an archive on this computer, or
is a path or module the user names (aarch64 nodes have no official build).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .cluster_blender import BlenderReport, BlenderSource, install_blender, record_blender
from .errors import UsageError
from .presets import load_preset
from .scripts import ScriptsReport, scripts_for
from .transport import transport_for
from .tree import ensure_root, remote_root


@dataclass(frozen=True)
class InstallReport:
    preset: str
    scripts: ScriptsReport
    seconds: float
    blender: BlenderReport | None = None  # when a Blender source was given
    record: str = ""  # the local file that records the Blender jobs use

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "preset": self.preset, "scripts_dir": self.scripts.directory, "scripts_version": self.scripts.version,
            "scripts_source": self.scripts.source, "uploaded": list(self.scripts.uploaded),
            "unchanged": list(self.scripts.unchanged), "changed": self.scripts.changed, "seconds": self.seconds}
        if self.blender is not None:
            report = self.blender
            data["blender"] = {**report.installed.to_json(), "directory": report.directory,
                               "changed": report.changed, "uploaded_bytes": report.downloaded_bytes,
                               "resumed_from": report.resumed_from, "record": self.record}
        return data


async def install(preset_name: str, source: BlenderSource | None = None, backend: str | None = None
                  ) -> InstallReport:
    """Install (or check) the scripts for a preset, and the Blender named by `source` if any."""
    started = time.perf_counter()
    preset = load_preset(preset_name)
    if preset.is_local:
        raise UsageError("the local preset needs no install: it runs the scripts from this package")
    root = remote_root(preset)
    if source is not None:
        source.kind()  # refuse two sources before connecting
    transport = transport_for(preset, backend)
    await ensure_root(transport, root)
    scripts = await scripts_for(transport, preset, root)
    blender = record = None
    if source is not None and source.kind():
        blender = await install_blender(transport, preset, root, source)
        record = str(record_blender(preset.name, blender.installed))
    return InstallReport(preset.name, scripts, round(time.perf_counter() - started, 3), blender, record or "")
