"""Facts a preset cannot source are listed as unconfirmed, checked against the list of facts, and shown to the
user; doctor's readers of `sinfo` and `qstat -Q` (text as Slurm and PBS Pro print it) decide which queue
facts a login confirms."""

from __future__ import annotations

import dataclasses

import pytest

from braas_hpc.core.errors import PresetError
from braas_hpc.core.presets import FACTS, all_presets, load_preset, preset_from_dict, unconfirmed_summary
from braas_hpc.core.readiness import Check, facts_check, parse_qstat_queues, parse_sinfo, queues_check, slurm_minutes

SITE = {"name": "site", "scheduler": "slurm", "host": "login.example.org", "partition_cpu": "cpu",
        "partitions": {"cpu": {"max_walltime_min": 1440}, "gpu": {"kind": "gpu", "cycles_device": "CUDA",
                                                                   "gpus_per_task": 1, "max_walltime_min": 2880}}}


def test_unconfirmed_names_facts_and_partitions_of_the_preset() -> None:
    preset = preset_from_dict({**SITE, "unconfirmed": ["modules", "walltime:cpu", "walltime:gpu"]}, "site.toml")
    assert unconfirmed_summary(preset) == "unconfirmed: check with your site: modules, walltime (cpu, gpu)"
    with pytest.raises(PresetError, match=r"unconfirmed 'module' is not a fact of a preset; facts: host, login"):
        preset_from_dict({**SITE, "unconfirmed": ["module"]}, "site.toml")
    with pytest.raises(PresetError, match=r"unconfirmed 'walltime:qgpu' names no partition .*\(cpu, gpu\)"):
        preset_from_dict({**SITE, "unconfirmed": ["walltime:qgpu"]}, "site.toml")
    assert unconfirmed_summary(preset_from_dict(SITE, "site.toml")) == ""


def test_every_built_in_says_what_it_could_not_source() -> None:
    """The sites whose pages could not be read carry their open facts; the list is data the faces show."""
    built = {p.name: p for p in all_presets() if p.source.endswith(f"core/presets/{p.name}.toml")}
    assert {"modules", "cycles_device"} <= set(built["lumi"].unconfirmed)
    assert {"partitions", "cycles_device"} <= set(built["aurora"].unconfirmed)
    assert "login" in built["mn5-gpp"].unconfirmed and "login" not in built["leonardo"].unconfirmed
    for preset in built.values():
        assert all(entry.partition(":")[0] in FACTS for entry in preset.unconfirmed)


def test_polaris_and_aurora_name_only_queues_of_the_site() -> None:
    polaris, aurora = load_preset("polaris"), load_preset("aurora")
    assert "capacity" not in polaris.partitions and "capacity" not in aurora.partitions
    assert polaris.partition_gpu == "preemptable" and polaris.partitions["preemptable"].max_walltime_min == 4320
    assert polaris.partitions["preemptable"].max_jobs_per_user == 20
    assert "rocm/6." in load_preset("lumi").env[0] and "rocm/5" not in load_preset("lumi").env[0]


def test_slurm_time_limits_read_as_minutes() -> None:
    assert [slurm_minutes(t) for t in ("2-00:00:00", "1:00:00", "30:00", "infinite", "1-12", "45", "7-00:00")] == \
        [2880, 60, 30, None, 2160, 45, 10080]


SINFO = "qcpu|up|2-00:00:00\nqgpu|up|1-00:00:00\nqfat|down|infinite\n\n"
QSTAT_Q = """\
Queue              Max   Tot Ena Str   Que   Run   Hld   Wat   Trn   Ext Type
---------------- ----- ----- --- --- ----- ----- ----- ----- ----- ----- ----
debug                0     3 yes yes     1     2     0     0     0     0 Exec
prod                 0     0 yes yes     0     0     0     0     0     0 Rout
demand               0     0 yes no      0     0     0     0     0     0 Exec
"""


def test_sinfo_and_qstat_queue_tables_are_read() -> None:
    assert parse_sinfo(SINFO) == {"qcpu": (True, 2880), "qgpu": (True, 1440), "qfat": (False, None)}
    assert parse_qstat_queues(QSTAT_Q) == {"debug": True, "prod": True, "demand": False}


def test_queues_fail_when_missing_down_or_shorter_and_confirm_equal_limits() -> None:
    preset = preset_from_dict({**SITE, "partition_cpu": "qcpu", "partitions": {
        "qcpu": {"max_walltime_min": 2880},
        "qgpu": {"kind": "gpu", "cycles_device": "CUDA", "max_walltime_min": 2880}}}, "site.toml")
    short = queues_check(preset, parse_sinfo(SINFO), set())
    assert short.ok is False and "qgpu allows 1440 min, the preset 2880" in short.found
    assert short.facts == ("walltime:qcpu",)
    good = dataclasses.replace(preset, partitions={**preset.partitions,
                                                  "qgpu": dataclasses.replace(preset.partitions["qgpu"],
                                                                              max_walltime_min=1440)})
    ok = queues_check(good, parse_sinfo(SINFO), set())
    assert ok.ok is True and set(ok.facts) == {"partitions", "walltime:qcpu", "walltime:qgpu"}
    fat = dataclasses.replace(preset, partitions={"qfat": preset.partitions["qcpu"],
                                                  "qnone": preset.partitions["qcpu"]})
    gone = queues_check(fat, parse_sinfo(SINFO), set())
    assert gone.ok is False and "not on the site: qnone" in gone.found and "not up: qfat" in gone.found
    assert "the site's: qcpu, qfat, qgpu" in gone.found and "partitions" not in gone.facts
    only_missing = dataclasses.replace(preset, partitions={"qcpu": preset.partitions["qcpu"],
                                                           "qnone": preset.partitions["qcpu"]})
    alone = queues_check(only_missing, parse_sinfo(SINFO), set())
    assert alone.ok is False and alone.found.startswith("not on the site: qnone"), alone
    qos = dataclasses.replace(preset, partitions={"qcpu": dataclasses.replace(preset.partitions["qcpu"], qos="gold")})
    assert queues_check(qos, parse_sinfo(SINFO), {"normal", "gold"}).ok is True
    no_qos = queues_check(qos, parse_sinfo(SINFO), {"normal"})
    assert no_qos.ok is False and "QoS gold" in no_qos.found, no_qos


def test_facts_check_says_what_the_login_confirmed_and_what_is_left() -> None:
    preset = preset_from_dict({**SITE, "unconfirmed": ["partitions", "modules", "cycles_device"]}, "site.toml")
    checks = [Check("queues", True, "", facts=("partitions",)), Check("modules", False, "", facts=("modules",))]
    done = facts_check(preset, checks)
    assert done.ok is None and done.facts == ("partitions",)
    assert done.found == "confirmed here: partitions; still unconfirmed: modules, cycles_device"
    all_done = facts_check(preset, [*checks, Check("modules", True, "", facts=("modules", "cycles_device"))])
    assert all_done.ok is True and all_done.found.endswith("; all confirmed")
