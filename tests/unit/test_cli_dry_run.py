"""`submit --dry-run`: the exact script and submit command for any preset, without connecting."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

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
        (["--preset", "karolina"], "needs an account"),
        (["--preset", "vista", "--account", "A"], "aarch64"),
        (["--preset", "vista", "--account", "A", "--memory", "8"], "aarch64"),
        (["--preset", "frontera", "--account", "A", "--memory", "8"], "rejects memory requests"),
        (["--preset", "mn5-gpp", "--account", "A", "--gpu"], "no default GPU partition"),
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


def test_embedded_python_runs_only_on_opt_in(user_dirs: dict[str, str]) -> None:
    base = ["submit", SCENE, "--preset", "karolina", "--account", "A1", "--frames", "1", "--dry-run", "--json"]
    default = json.loads(run_cli(*base).stdout)["script"]
    opted = json.loads(run_cli(*base, "--allow-scripts").stdout)["script"]
    assert " -b -Y " in default and " -b -y " not in default
    assert " -b -y " in opted and " -b -Y " not in opted
