"""Test-only: a site preset pointed at the test cluster, so its real script shape runs on real Slurm.

Everything the site's scheduler sees stays (directives, GPU request style, whole-node requests,
arrays or plain jobs, extra and dropped directives); what only that site has is mapped: its host
and workdir become the testbed's, partitions become qpair (CPU: the testbed's two nodes, so the whole-node
jobs of several sites run side by side) or qgpu by kind, QoS values (the testbed has
none) are cleared, cores per task are capped at the testbed's 2, and the account is the testbed's.
"""

from __future__ import annotations

import dataclasses
import json

from braas_hpc.core.presets import Partition, Preset

TESTBED_CPUS = 2


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):  # float: billing_factor; repr() of a float is valid TOML
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(preset: Preset) -> str:
    lines = []
    for f in dataclasses.fields(preset):
        value = getattr(preset, f.name)
        if f.name not in ("source", "partitions") and value is not None:  # None: the key absent
            lines.append(f"{f.name} = {_value(value)}")
    for name, part in preset.partitions.items():
        lines.append(f"\n[partitions.{json.dumps(name)}]")
        lines += [f"{f.name} = {_value(getattr(part, f.name))}" for f in dataclasses.fields(part)]
    return "\n".join(lines) + "\n"


def _mapped(part: Partition, scheduler: str) -> Partition:
    # PBS queue names stay: the PBS stand-in knows ALCF's queues and maps them itself.
    partition = part.partition if scheduler == "pbs" else "qgpu" if part.kind == "gpu" else "qpair"
    return dataclasses.replace(part, partition=partition, qos="", arch="",
                               cpus_per_task=min(part.cpus_per_task, TESTBED_CPUS), max_jobs_per_user=0)


def retarget(site: Preset, testbed: Preset) -> Preset:
    partitions = {name: _mapped(p, site.scheduler) for name, p in site.partitions.items()}
    return dataclasses.replace(
        site, name=f"tb-{site.name}", host=testbed.host, hosts=(), port=testbed.port, user=testbed.user,
        key_file=testbed.key_file, known_hosts=testbed.known_hosts, ssh_config="none", proxy_jump="",
        workdir=testbed.workdir, account=testbed.account, blender=testbed.blender, arch="x86_64",
        partitions=partitions, max_jobs_per_user=0, env=(),
    )
