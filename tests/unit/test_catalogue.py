"""The built-in site catalogue: every preset loads and says what a render on that site needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from braas_hpc.core.presets import BUILTIN_DIR, CYCLES_DEVICES, Preset, all_presets, load_preset_file

SITES = {"karolina", "barbora", "it4i-cs", "lumi", "leonardo", "mn5-gpp", "mn5-acc", "vista", "frontera",
         "polaris", "aurora"}
NO_GPU = {"mn5-gpp"}  # MareNostrum 5 GPP has no GPUs; its GPU twin is mn5-acc
NO_CPU = {"mn5-acc", "polaris", "aurora"}  # every node of these carries GPUs: no CPU queue is offered
GPU_DEVICES = set(CYCLES_DEVICES) - {"CPU"}


@pytest.fixture(autouse=True)
def no_user_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalogue is checked alone: a user's own presets must not hide or replace a built-in one."""
    monkeypatch.setenv("BRAAS_HPC_CONFIG_DIR", str(tmp_path))


def builtin(name: str) -> Preset:
    return load_preset_file(BUILTIN_DIR / f"{name}.toml")


def clusters() -> list[Preset]:
    return [p for p in all_presets() if not p.is_local]


def test_every_builtin_file_loads() -> None:
    files = sorted(BUILTIN_DIR.glob("*.toml"))
    assert [load_preset_file(path).name for path in files] == [path.stem for path in files]


def test_the_catalogue_is_complete() -> None:
    assert {p.name for p in all_presets()} == SITES | {"local"}


@pytest.mark.parametrize("name", sorted(SITES - NO_GPU))
def test_default_gpu_partition(name: str) -> None:
    preset = builtin(name)
    part = preset.partitions[preset.partition_gpu]
    assert part.kind == "gpu" and part.cycles_device in GPU_DEVICES
    assert part.gpus_per_task >= 1


@pytest.mark.parametrize("name", sorted(SITES - NO_CPU))
def test_default_cpu_partition(name: str) -> None:
    preset = builtin(name)
    part = preset.partitions[preset.partition_cpu]
    assert part.kind == "cpu" and part.cycles_device == "CPU"


@pytest.mark.parametrize("name", sorted(NO_GPU | NO_CPU))
def test_missing_defaults_are_really_missing(name: str) -> None:
    """A preset without a CPU (or GPU) default offers no partition of that kind either."""
    preset = builtin(name)
    if name in NO_CPU:
        assert preset.partition_cpu == "" and all(p.kind == "gpu" for p in preset.partitions.values())
    if name in NO_GPU:
        assert preset.partition_gpu == "" and all(p.kind == "cpu" for p in preset.partitions.values())


def test_gpu_partitions_name_a_gpu_device_and_cpu_ones_the_cpu() -> None:
    for preset in clusters():
        for name, part in preset.partitions.items():
            expected = GPU_DEVICES if part.kind == "gpu" else {"CPU"}
            assert part.cycles_device in expected, f"{preset.name}: {name}"


def test_pbs_presets_carry_their_filesystems() -> None:
    pbs = {p.name: p for p in clusters() if p.scheduler == "pbs"}
    assert set(pbs) == {"polaris", "aurora"}
    assert "-l filesystems=home:eagle" in pbs["polaris"].extra_directives
    assert "-l filesystems=flare" in pbs["aurora"].extra_directives
    for preset in pbs.values():
        assert "-r y" in preset.extra_directives and "-l place=scatter" in preset.extra_directives
        assert preset.gpu_request in ("ngpus", "none")


def test_vista_is_an_arm_site_without_memory_or_gpu_requests() -> None:
    vista = builtin("vista")
    assert vista.memory_allowed is False and "--mem" in vista.drop_directives
    assert vista.gpu_request == "none" and {"--gres", "--gpus-per-task"} <= set(vista.drop_directives)
    assert vista.arch == "aarch64" and vista.blender == "" and "aarch64" in vista.blender_note
    assert all(p.whole_node for p in vista.partitions.values())
    assert vista.max_jobs_per_user == 40


def test_arm_presets_ask_for_the_users_blender() -> None:
    for preset in clusters():
        arches = {preset.arch} | {p.arch for p in preset.partitions.values() if p.arch}
        if "aarch64" in arches:
            assert preset.blender == "" and preset.blender_note, preset.name
        else:
            assert preset.blender == "blender", preset.name


def test_vendor_devices() -> None:
    lumi, aurora = builtin("lumi"), builtin("aurora")
    assert {p.cycles_device for p in lumi.partitions.values() if p.kind == "gpu"} == {"HIP"}
    assert {p.cycles_device for p in aurora.partitions.values()} == {"ONEAPI"}
    assert any("rocm" in line for line in lumi.env)


def test_no_workdir_is_guessed() -> None:
    for preset in clusters():
        assert preset.workdir == "", preset.name
        assert preset.workdir_hint, preset.name
        assert "{" not in preset.workdir_hint.replace("{account}", "").replace("{user}", ""), preset.name


def test_it4i_sites_ask_the_site_for_the_project_dir() -> None:
    for name in ("karolina", "barbora", "it4i-cs"):
        preset = builtin(name)
        assert preset.workdir_command == ("it4i-get-project-dir", "{account}")
        assert preset.account_required


def test_walltime_defaults_are_within_limits() -> None:
    for preset in clusters():
        assert 0 < preset.default_walltime_min <= preset.max_walltime_min, preset.name
        for name, part in preset.partitions.items():
            assert 0 < part.default_walltime_min <= part.max_walltime_min, f"{preset.name}: {name}"
            assert part.max_walltime_min <= preset.max_walltime_min, f"{preset.name}: {name}"


def test_mare_nostrum_queues_are_qos_values() -> None:
    for name in ("mn5-gpp", "mn5-acc"):
        preset = builtin(name)
        assert "--partition" in preset.drop_directives
        assert all(part.qos == key for key, part in preset.partitions.items())


def test_whole_node_sites() -> None:
    for name in ("polaris", "aurora", "vista", "frontera"):
        assert all(p.whole_node for p in builtin(name).partitions.values()), name
    lumi = builtin("lumi")
    assert lumi.partitions["standard"].whole_node and lumi.partitions["standard-g"].whole_node
    assert not lumi.partitions["small-g"].whole_node and lumi.max_jobs_per_user == 210


def test_queues_with_access_rules_say_so() -> None:
    karolina = builtin("karolina")
    assert "PI" in karolina.partitions["qgpu"].note
    assert karolina.partitions["qgpu"].cpus_per_task == 16
    for preset in clusters():
        for name, part in preset.partitions.items():
            if "preempt" in name or name == "flex":
                assert "reemptible" in part.note, f"{preset.name}: {name}"
    # Polaris' prod takes 10 nodes and more: not a queue for a render's tasks. Aurora's prod routes small
    # jobs to its small queues (from an older page): kept, and said to be unconfirmed.
    assert "prod" not in builtin("polaris").partitions
    assert "unconfirmed" in builtin("aurora").partitions["prod"].note
