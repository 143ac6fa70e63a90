"""The PBS Pro stand-in of the test cluster (tests/testbed/pbs), driven over real ssh.

qsub/qstat/qdel are called exactly as a PBS Pro user at ALCF would call them; what they did is
checked on both sides: the PBS view (job ids, environment, `qstat -f -F json`) and Slurm's
(`sacct`/`squeue`), which really ran the jobs. The stand-in is not PBS Pro; see its README.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.testbed import testbed as tb

pytestmark = pytest.mark.testbed

SERVER = "pbs-standin"
Remote = Callable[..., subprocess.CompletedProcess[str]]

ARRAY_SCRIPT = """\
#!/bin/bash
#PBS -A braas
#PBS -q debug
#PBS -l select=1:ngpus=1
#PBS -l walltime=00:10:00
#PBS -l filesystems=home:eagle
#PBS -J 1-4
#PBS -r y
#PBS -N standin_array
#PBS -j oe
#PBS -o {dir}/out/sub.^array_index^.log
echo "$PBS_ARRAY_INDEX" > {dir}/index.$PBS_ARRAY_INDEX
printf '%s\\n' "$PBS_JOBID" "$PBS_O_WORKDIR" "$PWD" "$PBS_JOBNAME" "$NCPUS" "${{SLURM_JOB_ID:-}}" \\
    > {dir}/env.$PBS_ARRAY_INDEX
echo "subjob $PBS_ARRAY_INDEX done"
"""

SLEEP_BODY = "sleep 60\n"
PLAIN_SCRIPT = "#!/bin/bash\n" + SLEEP_BODY
# Everything ALCF requires, so each rejection case below fails for its own reason only.
VALID = "-A braas -l walltime=00:05:00 -l filesystems=home"


@dataclass(frozen=True)
class Cluster:
    run: Remote
    dir: str  # a fresh directory on the cluster for this module
    home: str

    def sh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run(f"cd {self.dir} && {command}", timeout=timeout)

    def ok(self, command: str) -> str:
        proc = self.sh(command)
        assert proc.returncode == 0, f"{command!r} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    def write(self, name: str, text: str) -> None:
        self.ok(f"cat > {name} <<'PBS_STANDIN_EOF'\n{text}PBS_STANDIN_EOF")

    def qsub(self, args: str) -> str:
        return self.ok(f"qsub {args}").strip()

    def qstat_json(self, job: str) -> dict[str, Any]:
        return json.loads(self.ok(f"qstat -x -f -F json -t '{job}'"))

    def read(self, *patterns: str) -> dict[str, str]:
        """The files matching the glob patterns, in one ssh round trip (each costs ~0.5 s)."""
        out = self.ok(f'for f in {" ".join(patterns)}; do printf \'\\0%s\\0\' "$f"; cat "$f"; done')
        parts = out.split("\0")[1:]
        return dict(zip(parts[::2], parts[1::2], strict=True))


@pytest.fixture(scope="module")
def workspace(testbed: tb.Testbed) -> Iterator[str]:
    """A directory on the cluster with the scripts of this module, removed at its end.

    Module-scoped to save ssh round trips, so it cannot use the function-scoped `remote`
    fixture; it runs the same command line (tb.ssh_command) itself.
    """
    workdir = f"{testbed.workdir}/pbs-standin-{secrets.token_hex(4)}"
    layout = tb.Layout.from_env()

    def ssh(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(tb.ssh_command(layout, command), capture_output=True, text=True, timeout=60)

    scripts = {"array.pbs": ARRAY_SCRIPT.format(dir=workdir), "plain.pbs": PLAIN_SCRIPT}
    writes = "".join(f"cat > {name} <<'PBS_STANDIN_EOF'\n{text}PBS_STANDIN_EOF\n" for name, text in scripts.items())
    proc = ssh(f"mkdir -p {workdir}/out && cd {workdir} && {writes}")
    assert proc.returncode == 0, proc.stderr
    yield workdir
    ssh(f"rm -rf {workdir}")


@pytest.fixture
def cluster(remote: Remote, workspace: str) -> Cluster:
    return Cluster(remote, workspace, str(tb.Layout.from_env().home))


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def seq_of(job: str) -> int:
    m = re.fullmatch(rf"(\d+)(\[\])?\.{SERVER}", job)
    assert m, f"not a PBS job id of the stand-in: {job!r}"
    return int(m.group(1))


def states(doc: dict[str, Any]) -> dict[str, str]:
    return {name: attrs["job_state"] for name, attrs in doc.get("Jobs", {}).items()}


def test_alcf_array_runs_every_subjob_with_pbs_environment(cluster: Cluster) -> None:
    job = cluster.qsub("array.pbs")
    seq = seq_of(job)
    assert job == f"{seq}[].{SERVER}"
    wait_for(f"{job} to finish", lambda: states(cluster.qstat_json(job)).get(job) == "F")

    files = cluster.read("index.*", "env.*", "out/sub.*.log")
    for i in range(1, 5):
        assert files[f"index.{i}"] == f"{i}\n"
        jobid, workdir, pwd, name, ncpus, slurm_id = files[f"env.{i}"].split("\n")[:6]
        assert jobid == f"{seq}[{i}].{SERVER}"
        assert workdir == cluster.dir  # PBS_O_WORKDIR: where qsub ran
        assert pwd == cluster.home  # PBS starts jobs in HOME, not in the submission directory
        assert (name, ncpus, slurm_id) == ("standin_array", "1", "")  # no Slurm variables leak in
        assert files[f"out/sub.{i}.log"] == f"subjob {i} done\n"  # -o with ^array_index^, and -j oe

    doc = cluster.qstat_json(job)
    assert doc["pbs_server"] == SERVER and isinstance(doc["timestamp"], int)
    jobs = doc["Jobs"]
    assert list(jobs) == [job, *(f"{seq}[{i}].{SERVER}" for i in range(1, 5))]
    parent = jobs[job]
    assert parent["job_state"] == "F" and parent["Exit_status"] == 0
    assert parent["array"] == "True" and parent["array_indices_submitted"] == "1-4"
    assert parent["array_state_count"].split() == ["Queued:0", "Running:0", "Exiting:0", "Expired:4"]
    assert (parent["queue"], parent["Account_Name"], parent["Job_Name"]) == ("debug", "braas", "standin_array")
    resources = parent["Resource_List"]
    assert (resources["ngpus"], resources["walltime"], resources["filesystems"]) == (1, "00:10:00", "home:eagle")
    assert parent["Variable_List"]["PBS_O_WORKDIR"] == cluster.dir
    for i in range(1, 5):
        sub = jobs[f"{seq}[{i}].{SERVER}"]
        assert (sub["job_state"], sub["Exit_status"], sub["array_index"]) == ("F", 0, i)
        assert sub["array_id"] == job

    # Slurm really ran them: four tasks of one array in the GPU partition, each holding one GPU.
    acct = cluster.ok(f"sacct -n -P -X -j {seq} -o JobID,Partition,State,AllocTRES").split()
    assert sorted(line.split("|")[0] for line in acct) == [f"{seq}_{i}" for i in range(1, 5)]
    for line in acct:
        _id, partition, state, tres = line.split("|")
        assert (partition, state) == ("qgpu", "COMPLETED") and "gres/gpu=1" in tres


REJECTIONS = [
    pytest.param(f"{VALID} -q nosuch", "Unknown queue", id="unknown-queue"),
    pytest.param("-A braas -l walltime=00:05:00", "filesystems is required to be set", id="missing-filesystems"),
    pytest.param(f"{VALID} -l filesystems=home:scratch", "unknown filesystem 'scratch'", id="unknown-filesystem"),
    pytest.param(f"{VALID} -J 1-4", "(-r y) for job arrays", id="array-without-r-y"),
    pytest.param(f"{VALID} -J 1-1 -r y", "illegal -J value", id="one-index-array"),
    pytest.param(f"{VALID} -l walltime=10min", "Resource_List.walltime", id="malformed-walltime"),
    pytest.param(f"{VALID} -N 9lives", "illegal -N value", id="name-not-alphabetic"),
    pytest.param(f"{VALID} -Z", "invalid option -- 'Z'", id="unknown-option"),
]


@pytest.mark.parametrize(("args", "message"), REJECTIONS)
def test_qsub_rejects_what_pbs_or_alcf_would(cluster: Cluster, args: str, message: str) -> None:
    proc = cluster.sh(f"qsub {args} plain.pbs")
    assert proc.returncode != 0
    assert proc.stdout == ""  # no job id: nothing was submitted
    assert proc.stderr.startswith("qsub: ") and message in proc.stderr, proc.stderr


def test_command_line_wins_over_directives_and_qdel_of_a_held_job(cluster: Cluster) -> None:
    cluster.write("directives.pbs", "#!/bin/bash\n#PBS -q nosuch\n#PBS -N from_directive\n" + SLEEP_BODY)
    job = cluster.qsub(f"{VALID} -q debug -N from_cmdline -h directives.pbs")
    attrs = cluster.qstat_json(job)["Jobs"][job]
    assert (attrs["queue"], attrs["Job_Name"], attrs["job_state"]) == ("debug", "from_cmdline", "H")
    cluster.ok(f"qdel {job}")
    wait_for(f"{job} to be history", lambda: states(cluster.qstat_json(job))[job] == "F", timeout=10)
    attrs = cluster.qstat_json(job)["Jobs"][job]
    assert (attrs["job_state"], attrs["substate"]) == ("F", 91) and "Exit_status" not in attrs  # never ran


def test_qdel_of_an_array_with_running_and_pending_subjobs(cluster: Cluster) -> None:
    # Five subjobs, one GPU each, on a node with two GPUs: at most two run, the rest wait.
    job = cluster.qsub(f"{VALID} -q debug -l select=1:ngpus=1 -J 1-5 -r y plain.pbs")
    seq = seq_of(job)

    def running_and_pending() -> bool:
        letters = list(states(cluster.qstat_json(job)).values())[1:]
        return "R" in letters and "Q" in letters

    wait_for(f"{job} to have running and queued subjobs", running_and_pending, timeout=30)
    before = cluster.qstat_json(job)["Jobs"]
    ran = {attrs["array_index"] for attrs in before.values() if attrs["job_state"] == "R"}

    def ran_started_in_accounting() -> bool:
        # squeue shows R a moment before slurmdbd records the start; a subjob deleted in between is
        # accounted as never started, so qdel waits until the running ones are really running.
        rows = cluster.ok(f"sacct -n -X -P -o JobID,Start -j {seq}").split()
        started = {row.split("|")[0] for row in rows if "|" in row and row.split("|")[1] not in ("", "Unknown", "None")}
        return all(f"{seq}_{i}" in started for i in ran)

    wait_for("the running subjobs' start in the accounting", ran_started_in_accounting, timeout=30)
    cluster.ok(f"qdel '{job}'")

    wait_for("squeue to forget the array", lambda: cluster.ok(f"squeue -h -j {seq}").strip() == "", timeout=20)
    wait_for(f"{job} to be history", lambda: states(cluster.qstat_json(job))[job] == "F", timeout=10)

    def ran_have_exit_status() -> bool:  # slurmdbd may record a start a moment after squeue showed R
        jobs = cluster.qstat_json(job)["Jobs"]
        return all("Exit_status" in jobs[f"{seq}[{i}].{SERVER}"] for i in ran)

    wait_for("the accounting of the subjobs that ran", ran_have_exit_status, timeout=30)
    jobs = cluster.qstat_json(job)["Jobs"]
    for i in range(1, 6):
        sub = jobs[f"{seq}[{i}].{SERVER}"]
        assert (sub["job_state"], sub["substate"]) == ("F", 91)  # 91: terminated (deleted)
        if i in ran:
            assert sub["Exit_status"] == 271  # killed by qdel's SIGTERM: 256 + 15, as PBS reports it
        else:
            assert "Exit_status" not in sub  # deleted before it ran

    gone = cluster.sh(f"qstat '{job}'")  # without -x a finished job is history
    assert gone.returncode == 35 and "Job has finished, use -x or -H" in gone.stderr
    unknown = cluster.sh(f"qdel {seq + 100000}")
    assert unknown.returncode == 153 and f"Unknown Job Id {seq + 100000}.{SERVER}" in unknown.stderr
