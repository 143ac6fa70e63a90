"""Each built-in site's key job-script directives, checked against a table written by hand from the sites'
documentation as docs/presets.md records it (not from the code's output, and not against the golden files).

Confidence tags are docs/presets.md's: [D] the centre's own documentation, [U] users' public job scripts,
[B] what the original BRaaS-HPC add-on does, [M] memory or inference. Anything not [D] is unconfirmed on the
site; the tag says so next to the value. The directive spelling (`--account=X`, `-A X`, `--array=1-4`,
`-J 1-4`) is Slurm's and PBS Pro's own syntax; `--exclusive` is how a whole-node request is written.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from braas_hpc.core.errors import UsageError
from braas_hpc.core.presets import BUILTIN_DIR
from braas_hpc.core.service import DryRun, dry_run
from braas_hpc.core.spec import ACCOUNT_PLACEHOLDER, SubmitRequest, build_spec
from tests.helpers import REPO

ACCOUNT = "project_465000001"  # LUMI's form (project_<id>) [D]; any other site takes it as a plain project id
TASKS = 4  # frames 1-4, one per task: an array of four
DEFAULT_WALLTIME = {"slurm": "--time=01:00:00", "pbs": "-l walltime=01:00:00"}  # the 60 min every preset uses
ARRAY = {"slurm": ("--array=1-4",), "pbs": ("-J 1-4", "-r y")}  # PBS: -r y on arrays [D, ALCF]
ACCOUNT_LINE = {"slurm": f"--account={ACCOUNT}", "pbs": f"-A {ACCOUNT}"}


@dataclass(frozen=True)
class Job:
    """One kind of job (CPU or GPU) on its default partition or queue."""

    lines: tuple[str, ...]  # directive arguments the job must carry
    absent: tuple[str, ...] = ()  # directive names it must not carry
    device: str = "CPU"  # the Cycles device the render is told to use
    # The finish step of this job: the smallest request the job's own partition takes (or the cheaper
    # partition every project may use that the preset names); every other resource directive is absent.
    finish: tuple[str, ...] = ()


@dataclass(frozen=True)
class Site:
    scheduler: str
    account_required: bool
    cpu: Job | None  # None: the site has no default for it
    gpu: Job | None
    every_job: tuple[str, ...] = ()  # directive arguments every job carries, the finish step's included
    rejected: tuple[str, ...] = ()  # directive names the site refuses: in no job at all
    arrays: bool = True
    env: tuple[str, ...] = ()  # shell lines every job runs before Blender
    finish_env: tuple[str, ...] | None = None  # the finish step's lines instead of env; None: env


SITES: dict[str, Site] = {
    "karolina": Site(
        "slurm", account_required=True,  # -A PROJECT-ID is mandatory [D]
        # qcpu: whole nodes [D]; its finish goes to the express queue, whose nodes "may be allocated on a per
        # core basis" and which keeps 2 nodes of its own [D, resources-allocation-policy, 2026-12-07]: one core.
        cpu=Job(("--partition=qcpu", "--exclusive"), absent=("--cpus-per-task",),
                finish=("--partition=qcpu_exp", "--cpus-per-task=1")),
        # qgpu: `--gpus 1` gives one A100 and 16 cores [D]; A100 has no RT cores: CUDA. Its finish stays in
        # qgpu: Karolina GPU node-hours are a project's own resource, billed per GPU (1/8 node) [D].
        gpu=Job(("--partition=qgpu", "--gpus=1", "--cpus-per-task=16"), absent=("--gres",), device="CUDA",
                finish=("--partition=qgpu", "--gpus=1", "--cpus-per-task=16")),
    ),
    "barbora": Site(
        "slurm", account_required=True,  # as Karolina [D]
        # whole nodes assumed as on Karolina [M]; Barbora's granularity is 1 node in every partition [D].
        cpu=Job(("--partition=qcpu", "--exclusive"), finish=("--partition=qcpu", "--cpus-per-task=1")),
        # --gres=gpu:1 as the original add-on does [B]; single GPUs with 6 cores each: NOT verified [M].
        gpu=Job(("--partition=qgpu", "--gres=gpu:1", "--cpus-per-task=6"), absent=("--gpus",), device="CUDA",
                finish=("--partition=qgpu", "--gres=gpu:1", "--cpus-per-task=6")),
    ),
    "it4i-cs": Site(
        "slurm", account_required=True,  # IT4I project accounting as on Karolina: NOT verified for CS [B/M]
        cpu=Job(("--partition=p00-arm", "--exclusive"),  # partition name [B]; whole nodes [M]
                finish=("--partition=p00-arm", "--cpus-per-task=1")),
        # p01-arm [B]; --gres=gpu:1 and 16 cores per GPU task are NOT verified [M].
        gpu=Job(("--partition=p01-arm", "--gres=gpu:1", "--cpus-per-task=16"), device="CUDA",
                finish=("--partition=p01-arm", "--gres=gpu:1", "--cpus-per-task=16")),
    ),
    "lumi": Site(
        "slurm", account_required=True,  # --account=project_<id> is mandatory [D]
        # small: shared nodes, billed per core [D]; 32 of 128 cores [M].
        cpu=Job(("--partition=small", "--cpus-per-task=32"), finish=("--partition=small", "--cpus-per-task=1")),
        # small-g [D]; --gres=gpu:N as the original add-on [B]; 7 cores per GCD [M]; HIP on MI250X: uncertain.
        gpu=Job(("--partition=small-g", "--gres=gpu:1", "--cpus-per-task=7"), device="HIP",
                finish=("--partition=small-g", "--gres=gpu:1", "--cpus-per-task=7")),
        # A ROCm 6 runtime and compiler: recent Blender loads ROCm 6 on Linux, the manual's minimum is ROCm 6.0
        # [D, Blender]; the LUMI module names are unconfirmed [M]. CPU jobs run them too.
        env=("module load LUMI/24.03 partition/G rocm/6.0.3",),
        finish_env=(),  # the summary renders nothing: no GPU modules

    ),
    "leonardo": Site(
        "slurm", account_required=True,  # docs/presets.md records budgets (saldo), not the rule: [M]
        # dcgp_usr_prod, 112 cores [U]: a quarter, 28 [M]; its QoS is left to the partition default [M].
        # The finish of every job: lrd_all_serial, budget-free, 4 cores and 4 h at most [U].
        cpu=Job(("--partition=dcgp_usr_prod", "--cpus-per-task=28"), absent=("--qos",),
                finish=("--partition=lrd_all_serial", "--cpus-per-task=1")),
        # boost_usr_prod with QoS normal [D/U]; 4 A100 and 32 cores per node [D/U]: 8 cores per GPU.
        gpu=Job(("--partition=boost_usr_prod", "--qos=normal", "--gres=gpu:1", "--cpus-per-task=8"), device="CUDA",
                finish=("--partition=lrd_all_serial", "--cpus-per-task=1")),
    ),
    "mn5-gpp": Site(
        "slurm", account_required=True,  # the account is the group, e.g. ehpc123 [U/B]
        # The queue is a QoS and --partition is optional [U/B]: never sent. 28 of 112 cores [M].
        cpu=Job(("--qos=gp_debug", "--cpus-per-task=28"), finish=("--qos=gp_debug", "--cpus-per-task=1")),
        gpu=None,  # no GPUs on GPP [U]
        rejected=("--partition",),
    ),
    "mn5-acc": Site(
        "slurm", account_required=True,  # as mn5-gpp [U/B]
        cpu=None,  # ACC nodes are for GPU work
        # QoS acc_debug [U]; --gres=gpu:1 with -c 20 as users and the original add-on do [U/B].
        gpu=Job(("--qos=acc_debug", "--gres=gpu:1", "--cpus-per-task=20"), device="CUDA",
                finish=("--qos=acc_debug", "--gres=gpu:1", "--cpus-per-task=20")),
        rejected=("--partition",),
    ),
    "vista": Site(
        "slurm", account_required=False,  # -A only for users in more than one project [D]
        # TACC never shares nodes [D]; -N and -t are required [D] (-t: the walltime line, checked for all).
        cpu=Job(("--partition=gg", "--nodes=1", "--exclusive"), finish=("--partition=gg", "--cpus-per-task=1")),
        # A gh node comes with its one H200 [D]: no GPU request at all.
        gpu=Job(("--partition=gh", "--nodes=1", "--exclusive"), absent=("--gpus",), device="CUDA",
                finish=("--partition=gh", "--cpus-per-task=1")),
        # "the scheduler will not accept your job" with these [D]; --export: TACC asks users not to use it [D].
        rejected=("--gres", "--gpus-per-task", "--mem", "--export"),
    ),
    "frontera": Site(
        "slurm", account_required=False,  # as Vista [D]
        cpu=Job(("--partition=small", "--nodes=1", "--exclusive"),  # small: 1-2 whole nodes [D]
                finish=("--partition=small", "--cpus-per-task=1")),
        # rtx: whole node, 4 Quadro RTX 5000 with RT cores: OPTIX (driver 535 NOT verified [M]).
        gpu=Job(("--partition=rtx", "--nodes=1", "--exclusive"), absent=("--gpus", "--gres"), device="OPTIX",
                finish=("--partition=rtx", "--cpus-per-task=1")),
        rejected=("--mem", "--export"),  # --mem is "Not available" and the job is refused [D]
        arrays=False,  # -a/--array is "Not available" on Frontera [D]
    ),
    "polaris": Site(
        "pbs", account_required=True,  # -A is mandatory [D]
        cpu=None,  # every node carries 4 A100: no CPU default (the project's choice, from [D] hardware)
        # preemptable: 1-10 nodes, 72 h, the only queue for 1-node jobs past an hour (prod takes 10 or more; no
        # capacity queue) [D, polaris/running-jobs, 2026-12-07]; jobs never share nodes [D]: no ngpus.
        gpu=Job(("-q preemptable", "-l select=1", "-r y"), device="CUDA",
                finish=("-q preemptable", "-l select=1:ncpus=1")),
        # -l filesystems=home:eagle is mandatory (Grand is retired) [D]; place=scatter is documented [D].
        every_job=("-l filesystems=home:eagle", "-l place=scatter"),
    ),
    "aurora": Site(
        "pbs", account_required=True,  # as Polaris [D]
        cpu=None,
        # prod, a routing queue for 1-node jobs in the newest table the research saw [U: not read again]; a task
        # takes the whole node (6 GPU Max 1550) [D]; ONEAPI on this GPU: unconfirmed.
        gpu=Job(("-q prod", "-l select=1"), device="ONEAPI", finish=("-q prod", "-l select=1:ncpus=1")),
        # -l filesystems=flare is required [D]; place=scatter and -k doe are the recommended options [D].
        every_job=("-l filesystems=flare", "-l place=scatter", "-k doe"),
    ),
}
CASES = [(name, device) for name, site in SITES.items() for device, job in (("CPU", site.cpu), ("GPU", site.gpu))
         if job is not None]


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The built-in presets as a user runs them: aarch64 sites need the user's own Blender path."""
    monkeypatch.setenv("BRAAS_HPC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))
    presets = tmp_path / "config" / "presets"
    presets.mkdir(parents=True)
    for name in ("vista", "it4i-cs"):
        (presets / f"{name}.toml").write_text(f'name = "{name}"\nbase = "{name}"\nblender = "/opt/blender/blender"\n')
    shutil.copy(REPO / "examples" / "sample" / "sample.blend", tmp_path / "scene.blend")
    return tmp_path / "scene.blend"


def directives(script: str, prefix: str) -> list[str]:
    """The directive arguments of a job script's header, in order."""
    lines = script.split("\n")
    header = lines[1:lines.index("")]
    assert all(line.startswith(f"{prefix} ") for line in header), header
    return [line[len(prefix) + 1:] for line in header]


def names(args: list[str]) -> set[str]:
    return {arg.split("=", 1)[0].split(" ", 1)[0] for arg in args}


def plan(scene: Path, name: str, device: str, **fields: object) -> DryRun:
    request: dict[str, object] = {"frames": "1-4", "chunk": 1, "device": device, "account": ACCOUNT, **fields}
    return dry_run(SubmitRequest(scene=scene, preset=name, **request))  # type: ignore[arg-type]


def test_the_table_covers_every_built_in_site() -> None:
    assert set(SITES) == {p.stem for p in BUILTIN_DIR.glob("*.toml")} - {"local"}


@pytest.mark.parametrize(("name", "device"), CASES)
def test_render_job_directives(scene: Path, name: str, device: str) -> None:
    site = SITES[name]
    job = site.cpu if device == "CPU" else site.gpu
    assert job is not None
    planned = plan(scene, name, device)
    prefix = {"slurm": "#SBATCH", "pbs": "#PBS"}[site.scheduler]
    args = directives(planned.script, prefix)
    expected = [ACCOUNT_LINE[site.scheduler], DEFAULT_WALLTIME[site.scheduler], *job.lines, *site.every_job]
    assert [line for line in expected if line not in args] == [], args
    assert names(args) & {*job.absent, *site.rejected} == set(), args
    submits = planned.submit_command.splitlines()
    if site.arrays:
        assert [line for line in ARRAY[site.scheduler] if line not in args] == [], args
        assert len(submits) == 1, submits
    else:  # no array directive: one plain job per task, its number the script's argument
        assert names(args) & {"--array", "-a", "-J"} == set(), args
        assert [line.rsplit(" ", 1)[-1] for line in submits] == ["1", "2", "3", "4"], submits
    exec_line = planned.script.rstrip("\n").rsplit("\n", 1)[-1]
    assert f"--device {device}" in exec_line
    if device == "GPU":
        assert exec_line.endswith(f"--cycles-device {job.device}"), exec_line
    body = planned.script.split("\n")
    assert [line for line in site.env if line not in body] == []


# What a finish step may ask beyond its table's lines: nothing that makes it bigger or repeats it.
FINISH_NEVER = {"--array", "-J", "-a", "--exclusive", "--mem", "--mail-user", "-M"}
RESOURCES = {"--partition", "--qos", "--gpus", "--gres", "--cpus-per-task", "-q"}


@pytest.mark.parametrize(("name", "device"), CASES)
def test_finish_job_directives(scene: Path, name: str, device: str) -> None:
    """The finish step is a job on the same site: the same account, filesystems and rules, and the request
    in the table for the job it follows."""
    site = SITES[name]
    job = site.cpu if device == "CPU" else site.gpu
    assert job is not None and job.finish, f"{name} {device}: the table has no finish request"
    planned = plan(scene, name, device)
    args = directives(planned.finish_script, {"slurm": "#SBATCH", "pbs": "#PBS"}[site.scheduler])
    expected = [ACCOUNT_LINE[site.scheduler], "--time=00:15:00" if site.scheduler == "slurm" else
                "-l walltime=00:15:00", *job.finish, *site.every_job]
    assert [line for line in expected if line not in args] == [], args
    assert names(args) & {*site.rejected, *FINISH_NEVER} == set(), args
    # No resource line the table does not name (a second GPU request, a QoS left from the render job).
    extra = [a for a in args if names([a]) & RESOURCES and a not in job.finish and a not in site.every_job]
    assert extra == [], args
    body = planned.finish_script.split("\n")
    finish_env = site.env if site.finish_env is None else site.finish_env
    assert [line for line in finish_env if line not in body] == []
    assert [line for line in site.env if line not in finish_env and line in body] == [], "GPU modules in the finish"


@pytest.mark.parametrize("name", list(SITES))
def test_walltime_form(scene: Path, name: str) -> None:
    site = SITES[name]
    args = directives(plan(scene, name, "CPU" if site.cpu else "GPU", walltime_min=90).script,
                      {"slurm": "#SBATCH", "pbs": "#PBS"}[site.scheduler])
    assert {"slurm": "--time=01:30:00", "pbs": "-l walltime=01:30:00"}[site.scheduler] in args, args


@pytest.mark.parametrize("name", list(SITES))
def test_account_rule(scene: Path, name: str) -> None:
    site = SITES[name]
    device = "CPU" if site.cpu else "GPU"
    if site.account_required:
        request = SubmitRequest(scene=scene, preset=name, frames="1-4", device=device, account="")
        with pytest.raises(UsageError, match=f"preset {name} needs an account"):
            build_spec(request)
        shown = plan(scene, name, device, account="")  # a dry run shows the missing account as such
        assert ACCOUNT_PLACEHOLDER in shown.script and ACCOUNT_PLACEHOLDER in shown.placeholders
        return
    args = directives(plan(scene, name, device, account="").script, "#SBATCH")
    assert names(args) & {"--account", "-A"} == set(), args
