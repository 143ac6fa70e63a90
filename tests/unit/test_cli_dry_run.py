"""`submit --dry-run`: the exact script and submit command for any preset, without connecting."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest

from braas_hpc.core.presets import BUILTIN_DIR, load_preset
from tests.conftest import run_cli
from tests.helpers import REPO

SCENE = str(REPO / "examples" / "sample" / "sample.blend")


def test_dry_run_prints_script_and_command(user_dirs: dict[str, str]) -> None:
    done = run_cli("submit", SCENE, "--preset", "karolina", "--frames", "1-10", "--chunk", "5", "--gpu",
                   "--account", "OPEN-33-7", "--email", "me@example.org", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    # The tree is the user's own: its name carries the login name (the local one here: no user in the preset).
    assert plan["submit"].startswith(f"sbatch --parsable '<workdir>/braas-hpc-{getpass.getuser()}/jobs/sample-")
    for line in ("#SBATCH --account=OPEN-33-7", "#SBATCH --partition=qgpu", "#SBATCH --array=1-2",
                 "#SBATCH --gpus=1", "#SBATCH --mail-user=me@example.org", "#SBATCH --mail-type=END,FAIL"):
        assert line in plan["script"].splitlines()
    assert plan["frames_file"] == "1,2,3,4,5\n6,7,8,9,10\n"
    assert not any(Path(d).exists() and any(Path(d).rglob("*.sqlite")) for d in user_dirs.values())


def test_dry_run_on_pbs_and_without_arrays(user_dirs: dict[str, str]) -> None:
    pbs = run_cli("submit", SCENE, "--preset", "polaris", "--frames", "1-3", "--gpu", "--account", "Vis",
                  "--dry-run")
    assert pbs.returncode == 0, pbs.stderr
    assert "#PBS -J 1-3" in pbs.stdout and "#PBS -l filesystems=home:eagle" in pbs.stdout
    frontera = run_cli("submit", SCENE, "--preset", "frontera", "--frames", "1-3", "--account", "A1",
                       "--dry-run", "--json")
    plan = json.loads(frontera.stdout)
    assert "--array" not in plan["script"]
    assert [c.split()[-1] for c in plan["submit"].splitlines()] == ["1", "2", "3"]  # one plain job per task


def test_site_limits_are_checked_before_anything(user_dirs: dict[str, str]) -> None:
    cases = [
        (["--preset", "vista", "--account", "A", "--memory", "8"], "rejects memory requests"),
        (["--preset", "frontera", "--account", "A", "--memory", "8"], "rejects memory requests"),
        (["--preset", "mn5-gpp", "--account", "A", "--gpu"], "has no GPU partition (leave --gpu out)"),
        (["--preset", "karolina", "--account", "A", "--walltime", "5000"], "above the limit"),
        (["--preset", "karolina", "--account", "A", "--email", "not-an-address"], "not valid"),
        (["--preset", "karolina", "--account", "A;rm -rf /"], "may hold only"),
        (["--preset", "lumi", "--account", "A", "--frames", "1-300"], "use --chunk 2 or more"),
    ]
    for args, message in cases:
        frames = [] if "--frames" in args else ["--frames", "1-4"]
        done = run_cli("submit", SCENE, *frames, *args, "--dry-run")
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)


def test_what_only_a_real_submission_needs_is_refused_before_connecting(user_dirs: dict[str, str]) -> None:
    # No --dry-run: refused by the spec, before any login (the presets have no user or workdir here).
    for args, message in ((["--preset", "karolina"], "needs an account"),
                          (["--preset", "vista", "--account", "A"], "aarch64")):
        done = run_cli("submit", SCENE, "--frames", "1-4", *args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)


def _gpu_only(name: str) -> bool:
    return not any(p.kind == "cpu" for p in load_preset(name).partitions.values()) and name != "local"


@pytest.mark.parametrize("name", sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")))
def test_dry_run_works_for_every_preset_without_an_account(user_dirs: dict[str, str], name: str) -> None:
    device = ["--gpu"] if _gpu_only(name) else []
    done = run_cli("submit", SCENE, "--preset", name, "--frames", "1-2", *device, "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    preset = load_preset(name)
    if preset.account_required:
        assert "<ACCOUNT>" in plan["script"] and "--account" in plan["placeholders"]["<ACCOUNT>"]
    else:
        assert "<ACCOUNT>" not in plan["script"] and "<ACCOUNT>" not in plan["placeholders"]
    if preset.arch == "aarch64" and not preset.blender:
        assert "exec '<YOUR-BLENDER>' -b" in plan["script"] and "<YOUR-BLENDER>" in plan["placeholders"]
    if not preset.workdir and not preset.is_local:
        assert "<workdir>" in plan["placeholders"]
    text = run_cli("submit", SCENE, "--preset", name, "--frames", "1-2", *device, "--dry-run")
    assert text.returncode == 0, text.stderr
    shown = [line for line in text.stdout.splitlines() if line.startswith("# placeholder ")]
    assert sorted(line.split()[2].rstrip(":") for line in shown) == sorted(plan["placeholders"])


def test_gpu_only_preset_asked_for_a_cpu_job_says_add_gpu(user_dirs: dict[str, str]) -> None:
    done = run_cli("submit", SCENE, "--preset", "polaris", "--frames", "1", "--dry-run")
    assert done.returncode == 2
    assert "preset polaris has no CPU partition (add --gpu); its partitions: debug (gpu), debug-scaling (gpu)" \
        in done.stderr


@pytest.mark.parametrize(("name", "args", "listed"), [
    ("karolina", ["--partition", "qcpu_typo"], "qcpu (cpu), qcpu_exp (cpu)"),
    ("karolina", ["--gpu", "--partition", "qgpu_typo"], "qgpu (gpu)"),
    ("mn5-gpp", ["--partition", "gp_bsc"], "gp_debug (cpu, QoS gp_debug), gp_ehpc (cpu, QoS gp_ehpc)"),
])
def test_unknown_partition_or_qos_is_refused_with_the_list(user_dirs: dict[str, str], name: str, args: list[str],
                                                            listed: str) -> None:
    for dry in (["--dry-run"], []):  # refused the same before a real submission connects
        done = run_cli("submit", SCENE, "--preset", name, "--frames", "1", "--account", "A1", *args, *dry)
        assert done.returncode == 2, done.stderr
        assert f"preset {name} has no partition" in done.stderr and args[-1] in done.stderr, done.stderr
        assert listed in done.stderr, done.stderr
    if name == "mn5-gpp":
        assert "no partition or QoS 'gp_bsc'" in done.stderr


def test_embedded_python_runs_only_on_opt_in(user_dirs: dict[str, str]) -> None:
    base = ["submit", SCENE, "--preset", "karolina", "--account", "A1", "--frames", "1", "--dry-run", "--json"]
    default = json.loads(run_cli(*base).stdout)["script"]
    opted = json.loads(run_cli(*base, "--allow-scripts").stdout)["script"]
    assert " -b -Y " in default and " -b -y " not in default
    assert " -b -y " in opted and " -b -Y " not in opted
