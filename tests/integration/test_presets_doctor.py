"""Setting up a cluster without writing TOML: `presets add` writes the user's own preset on top of a
built-in, `presets` says which presets are ready and what each needs, and `doctor` asks the cluster
(login, account, working directory, scripts, Blender) and says how to fix what fails."""

from __future__ import annotations

import json
import os
import socket
import tomllib
from pathlib import Path

from tests.conftest import run_cli
from tests.integration.test_keeper import write_preset
from tests.testbed import testbed as tb


def _presets_dir() -> Path:
    return Path(os.environ["BRAAS_HPC_CONFIG_DIR"]) / "presets"


def test_presets_add_writes_the_users_own_file_and_presets_says_what_it_still_needs(
        user_dirs: dict[str, str]) -> None:
    added = run_cli("presets", "add", "kar", "--base", "karolina", "--account", "OPEN-00-00", "--user", "me")
    assert added.returncode == 0, added.stderr
    path = _presets_dir() / "kar.toml"
    assert tomllib.loads(path.read_text()) == {"name": "kar", "base": "karolina", "account": "OPEN-00-00",
                                               "user": "me"}
    assert "to do, workdir" in added.stdout and "braas-hpc workdir kar" in added.stdout, added.stdout
    listed = json.loads(run_cli("presets", "--json").stdout)["presets"]
    mine = next(p for p in listed if p["name"] == "kar")
    assert mine["yours"] and mine["ready"] == "needs workdir, host key", mine
    assert not any("source" in p or any(str(v).startswith("/") and "site-packages" in str(v) for v in p.values())
                   for p in listed)
    karolina = next(p for p in listed if p["name"] == "karolina")
    fixes = {c["what"]: c["fix"] for c in karolina["checks"]}
    assert fixes["account"].startswith("braas-hpc presets add karolina --base karolina --account"), fixes
    assert "local" in [p["name"] for p in listed if p["ready"] == "ready"]
    shown = run_cli("presets")
    assert shown.returncode == 0 and "kar (yours)" in shown.stdout, shown.stdout


def test_presets_add_refuses_what_would_be_lost_or_invalid(user_dirs: dict[str, str]) -> None:
    assert run_cli("presets", "add", "kar", "--base", "karolina", "--account", "A").returncode == 0
    before = (_presets_dir() / "kar.toml").read_text()
    again = run_cli("presets", "add", "kar", "--base", "karolina", "--account", "B")
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    bad = run_cli("presets", "add", "kar", "--base", "karolina", "--workdir", "relative/dir", "--force")
    assert bad.returncode == 2 and "workdir" in bad.stderr, bad.stderr
    assert (_presets_dir() / "kar.toml").read_text() == before
    unknown = run_cli("presets", "add", "x1", "--base", "nosuchsite")
    assert unknown.returncode == 2 and "karolina" in unknown.stderr, unknown.stderr
    assert not (_presets_dir() / "x1.toml").exists()
    replaced = run_cli("presets", "add", "kar", "--base", "karolina", "--account", "B", "--force")
    assert replaced.returncode == 0 and tomllib.loads((_presets_dir() / "kar.toml").read_text())["account"] == "B"


def test_doctor_finds_the_test_cluster_ready(testbed: tb.Testbed) -> None:
    done = run_cli("doctor", "testbed", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ready"] == "ready"
    assert {c["what"]: c["ok"] for c in report["checks"]} == {
        "host key": True, "login": True, "account": True, "workdir": True, "scripts": True, "blender": True,
        "queues": True, "gpu partition": True, "modules": True, "site facts": True}
    gpu = next(c for c in report["checks"] if c["what"] == "gpu partition")
    assert "qgpu takes a GPU job" in gpu["found"] and "to start at" in gpu["found"], gpu  # sbatch --test-only


def test_doctor_says_what_is_wrong_and_how_to_fix_it(testbed: tb.Testbed) -> None:
    write_preset(testbed, "tb-doctor", account="someone-elses", workdir="/nonexistent/work",
                 blender="/nonexistent/blender")
    done = run_cli("doctor", "tb-doctor", "--json")
    assert done.returncode == 1, done.stderr
    checks = {c["what"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["login"]["ok"] and not checks["account"]["ok"] and not checks["workdir"]["ok"], checks
    assert "not one of yours: braas" in checks["account"]["found"]
    assert "set account in" in checks["account"]["fix"] and "tb-doctor.toml" in checks["account"]["fix"]
    assert checks["blender"]["ok"] is False and "braas-hpc install tb-doctor" in checks["blender"]["fix"]
    text = run_cli("doctor", "tb-doctor")
    assert text.returncode == 1 and "FAIL account" in text.stdout and "to fix:" in text.stdout, text.stdout

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        write_preset(testbed, "tb-doctor", port=closed.getsockname()[1])
        down = run_cli("doctor", "tb-doctor", "--json")
    assert down.returncode == 1
    login = next(c for c in json.loads(down.stdout)["checks"] if c["what"] == "login")
    assert login["ok"] is False and "refused" in login["found"] and "VPN" in login["fix"], login


# ---- the site's facts as a login node sees them: queues, the GPU partition, module lines ----------------

# A stand-in for an Lmod `module` function (the testbed has no module system): `module load NAME` succeeds when
# NAME is a file under the module path and otherwise fails as Lmod does, with its message on stderr.
MODULE_STANDIN = """\
module() {
  [ "$1" = load ] || return 0
  shift
  for m in "$@"; do
    [ -e "$BRAAS_TEST_MODULEPATH/$m" ] || {
      echo "Lmod has detected the following error: The following module(s) are unknown: \\"$m\\"" >&2; return 1; }
  done
}
"""


def _write_site_preset(testbed: tb.Testbed, name: str, extra: str) -> None:
    """The testbed's login with a site's own partition table and module lines (a whole file: tables included)."""
    base = tomllib.loads(testbed.preset_file.read_text())
    mine = tomllib.loads(extra)
    keep = {k: v for k, v in base.items() if k not in ("name", "env", "partition_cpu", "partition_gpu", *mine)}
    head = "\n".join(f"{k} = {json.dumps(v)}" for k, v in keep.items())
    (_presets_dir()).mkdir(exist_ok=True)
    (_presets_dir() / f"{name}.toml").write_text(f'name = "{name}"\n{head}\n{extra}')


def test_doctor_confirms_queues_gpu_partition_and_modules_and_says_what_is_left(testbed: tb.Testbed, remote,  # noqa: ANN001
                                                                               tmp_path: Path) -> None:
    stand_in = f".braas-doctor-{tmp_path.name}"
    made = remote(f"mkdir -p ~/{stand_in}/rocm && touch ~/{stand_in}/rocm/6.0.3 && cat > ~/{stand_in}.sh <<'EOF'\n"
                  f"BRAAS_TEST_MODULEPATH=$HOME/{stand_in}\n{MODULE_STANDIN}EOF")
    assert made.returncode == 0, made.stderr
    try:
        _write_site_preset(testbed, "tb-site", f"""\
partition_cpu = "qcpu"
partition_gpu = "qgpu"
env = [". ~/{stand_in}.sh", "module load rocm/6.0.3"]
unconfirmed = ["partitions", "modules", "gpu_request", "cycles_device", "walltime:qgpu"]

[partitions.qcpu]
max_walltime_min = 60

[partitions.qgpu]
kind = "gpu"
gpus_per_task = 1
cycles_device = "CUDA"
max_walltime_min = 60
""")
        done = run_cli("doctor", "tb-site", "--json")
        checks = {c["what"]: c for c in json.loads(done.stdout)["checks"]}
        assert done.returncode == 0, done.stdout + done.stderr
        assert checks["queues"]["ok"] and "partitions" in checks["queues"]["facts"], checks["queues"]
        assert checks["gpu partition"]["ok"] and checks["modules"]["ok"], checks
        assert "module load rocm/6.0.3" in checks["modules"]["found"]
        facts = checks["site facts"]
        # The testbed's partitions have no time limit: a login cannot confirm the preset's 60 minutes.
        assert facts["ok"] is None and facts["found"] == (
            "confirmed here: partitions, modules, gpu_request; still unconfirmed: cycles_device, walltime:qgpu"), facts
        assert "--frames 1" in facts["fix"]

        _write_site_preset(testbed, "tb-site", f"""\
partition_cpu = "qcpu"
partition_gpu = "qgpu"
env = [". ~/{stand_in}.sh", "module load rocm/5.2.3"]

[partitions.qcpu]

[partitions.qgpu]
kind = "gpu"
cycles_device = "CUDA"

[partitions.qnowhere]
""")
        bad = run_cli("doctor", "tb-site", "--json")
        checks = {c["what"]: c for c in json.loads(bad.stdout)["checks"]}
        assert bad.returncode == 1
        assert checks["queues"]["ok"] is False and "not on the site: qnowhere" in checks["queues"]["found"]
        assert "qcpu, qgpu, qhigh, qlow, qpair" in checks["queues"]["found"], checks["queues"]
        assert "gpu partition" not in checks  # not tried while the queue table is wrong
        assert checks["modules"]["ok"] is False and "module(s) are unknown" in checks["modules"]["found"]
        assert "rocm/5.2.3" in checks["modules"]["found"] and "module avail" in checks["modules"]["fix"]
        text = run_cli("doctor", "tb-site")
        assert "FAIL modules" in text.stdout and "FAIL queues" in text.stdout, text.stdout
    finally:
        remote(f"rm -rf ~/{stand_in} ~/{stand_in}.sh")


def test_doctor_says_when_the_gpu_partition_cannot_take_the_request(testbed: tb.Testbed) -> None:
    """sbatch --test-only for more GPUs than a node of the partition has (the testbed's have two): Slurm
    refuses, and doctor shows Slurm's reason."""
    _write_site_preset(testbed, "tb-gpu", """\
partition_cpu = "qcpu"
partition_gpu = "qgpu"

[partitions.qcpu]

[partitions.qgpu]
kind = "gpu"
gpus_per_task = 3
cycles_device = "CUDA"
""")
    done = run_cli("doctor", "tb-gpu", "--json")
    checks = {c["what"]: c for c in json.loads(done.stdout)["checks"]}
    assert done.returncode == 1 and checks["gpu partition"]["ok"] is False, checks
    found = checks["gpu partition"]["found"]
    assert "qgpu refused a 3-GPU test job" in found and "Requested node configuration is not available" in found, found
    assert "gpu_request" in checks["gpu partition"]["fix"]


def test_doctor_reads_the_pbs_queue_table(testbed: tb.Testbed) -> None:
    """Polaris's queues (the user's own preset on top of the built-in) against the PBS stand-in's qstat -Q."""
    tb.ensure_pbs_standin(tb.Layout.from_env())  # this tree's stand-in (`testbed up` installs it the same way)
    _write_site_preset(testbed, "tb-polaris", 'base = "polaris"\nscheduler = "pbs"\n')
    done = run_cli("doctor", "tb-polaris", "--json")
    checks = {c["what"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["queues"]["ok"] is True, checks["queues"]
    assert checks["queues"]["found"] == "debug, debug-scaling, preemptable", checks["queues"]
    assert "gpu partition" not in checks  # only Slurm can test a job without submitting it
    # A queue the site does not have (as `capacity` was in an older Polaris preset): the table says so.
    _write_site_preset(testbed, "tb-polaris", 'base = "polaris"\nscheduler = "pbs"\npartition_gpu = "capacity-gone"\n'
                       '[partitions.capacity-gone]\nkind = "gpu"\nwhole_node = true\ncycles_device = "CUDA"\n')
    gone = {c["what"]: c for c in json.loads(run_cli("doctor", "tb-polaris", "--json").stdout)["checks"]}
    assert gone["queues"]["ok"] is False and "not on the site: capacity-gone" in gone["queues"]["found"], gone
