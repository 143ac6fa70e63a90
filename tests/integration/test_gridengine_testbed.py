"""The test cluster's Grid Engine (Son of Grid Engine 8.1.9, tests/testbed/gridengine.py), driven over real ssh.

What a Grid Engine scheduler class will rely on: `qsub -terse` ids, array tasks and their environment,
`qstat -xml` while tasks wait and run, `-tc`, `qdel -t`, `-hold_jid`, `qacct -j` per task, and the
errors for an unknown job. Jobs are tiny shell scripts; a job that must stay running waits for a gate
file the test creates, so every order below is certain whatever the scheduler's pace.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.helpers import eventually
from tests.testbed import gridengine
from tests.testbed import testbed as tb

pytestmark = pytest.mark.testbed

Remote = Callable[..., subprocess.CompletedProcess[str]]
# What a Grid Engine user's profile does: SGE's commands before the PBS stand-in's namesakes.
SETTINGS = '. "$SGE_ROOT/$SGE_CELL/common/settings.sh"'

# Writes its task id and what it sees, waits for the job's gate file when asked (bounded: 60 s), and
# fails task 2 with status 3 when asked.
TASK_SCRIPT = """\
echo "start $SGE_TASK_ID $(date +%s.%N)" >> times.$JOB_ID
printf '%s\\n' "$SGE_TASK_ID" "$JOB_ID" "$SGE_TASK_FIRST" "$SGE_TASK_LAST" "$SGE_TASK_STEPSIZE" "$NSLOTS" \\
    "$JOB_NAME" "$PWD" > task.$JOB_ID.$SGE_TASK_ID
if [ -n "$GATE" ]; then
    i=0; while [ ! -e gate.$JOB_ID ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
fi
echo "end $SGE_TASK_ID $(date +%s.%N)" >> times.$JOB_ID
[ -n "$FAIL_TWO" ] && [ "$SGE_TASK_ID" = 2 ] && exit 3
exit 0
"""
# qsub options every job here uses: bash (the queue's shell is /bin/sh and ignores #!), this directory.
QSUB = "qsub -terse -S /bin/bash -cwd -j y -o out"


@dataclass(frozen=True)
class Cluster:
    run: Remote
    dir: str

    def sh(self, command: str) -> subprocess.CompletedProcess[str]:
        return self.run(f"{SETTINGS} && cd {self.dir} && {command}", timeout=60)

    def ok(self, command: str) -> str:
        proc = self.sh(command)
        assert proc.returncode == 0, f"{command!r} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    def qstat_xml(self) -> ET.Element:
        return ET.fromstring(self.ok("qstat -xml"))

    def gone(self, job: int) -> bool:
        """True once the qmaster no longer knows the job (every task ended or was deleted)."""
        proc = self.sh(f"qstat -j {job}")
        return proc.returncode == 1 and "Following jobs do not exist" in proc.stderr

    def qacct(self, job: int) -> list[dict[str, str]]:
        """`qacct -j` as one dict per record (per task of an array), [] while it has none."""
        proc = self.sh(f"qacct -j {job}")
        records = []
        for block in proc.stdout.split("=" * 62)[1:]:
            records.append({k: v.strip() for k, _, v in (line.partition(" ") for line in block.strip().splitlines())})
        return records

    def files(self, pattern: str) -> dict[str, str]:
        out = self.ok(f'for f in {pattern}; do [ -e "$f" ] && printf \'\\0%s\\0\' "$f" && cat "$f"; done; true')
        parts = out.split("\0")[1:]
        return dict(zip(parts[::2], parts[1::2], strict=True))


@pytest.fixture(scope="module")
def workspace(testbed: tb.Testbed) -> Iterator[str]:
    """A directory on the cluster with the task script, removed at the end (module-scoped: one ssh round trip)."""
    workdir = f"{testbed.workdir}/gridengine-{secrets.token_hex(4)}"
    layout = tb.Layout.from_env()

    def ssh(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(tb.ssh_command(layout, command), capture_output=True, text=True, timeout=60)

    proc = ssh(f"mkdir -p {workdir}/out && cat > {workdir}/task.sh <<'SGE_EOF'\n{TASK_SCRIPT}SGE_EOF")
    assert proc.returncode == 0, proc.stderr
    yield workdir
    ssh(f"rm -rf {workdir}")  # a job left by a failed test ends by itself (its gate wait is bounded)


@pytest.fixture
def cluster(remote: Remote, workspace: str) -> Cluster:
    return Cluster(remote, workspace)


def job_lists(doc: ET.Element, job: int) -> list[dict[str, str]]:
    """The job's <job_list> entries of `qstat -xml` (running ones under queue_info, pending under job_info)."""
    found = []
    for entry in doc.iter("job_list"):
        if entry.findtext("JB_job_number") == str(job):
            found.append({"list": entry.get("state", ""), **{child.tag: (child.text or "") for child in entry}})
    return found


def array_id(terse: str, tasks: str) -> int:
    """The job number from `qsub -terse` of an array: `<id>.<first>-<last>:<step>`."""
    m = re.fullmatch(rf"(\d+)\.{re.escape(tasks)}", terse.strip())
    assert m, f"not `qsub -terse` output of an array {tasks}: {terse!r}"
    return int(m.group(1))


def times(text: str) -> dict[tuple[str, str], float]:
    """`start|end <task> <epoch>` lines -> {(event, task): epoch}."""
    return {(event, task): float(at) for event, task, at in (line.split() for line in text.splitlines())}


def test_session_finds_grid_engine(remote: Remote) -> None:
    proc = remote(f'echo "$SGE_ROOT $SGE_CELL"; command -v qacct; {SETTINGS} && command -v qsub qstat qdel qrls')
    assert proc.returncode == 0, proc.stderr
    layout = tb.Layout.from_env()
    sge_bin = f"{layout.sge_root}/bin/{gridengine.arch()}"
    commands = [f"{sge_bin}/{c}" for c in ("qsub", "qstat", "qdel", "qrls")]
    assert proc.stdout.split("\n")[:-1] == [f"{layout.sge_root} {gridengine.CELL}", "/usr/bin/qacct", *commands]


def test_array_runs_every_task_but_the_deleted_one_and_qacct_reports_each(cluster: Cluster) -> None:
    job = array_id(cluster.ok(f"{QSUB} -h -N sge_array -t 1-4 -v FAIL_TWO=1 task.sh"), "1-4:1")

    # Held: one pending entry for the whole range; qstat -j names the range too.
    [held] = job_lists(cluster.qstat_xml(), job)
    assert (held["list"], held["state"], held["tasks"], held["JB_name"]) == ("pending", "hqw", "1-4:1", "sge_array")
    assert re.search(r"^job-array tasks:\s+1-4:1$", cluster.ok(f"qstat -j {job}"), re.M)

    assert cluster.ok(f"qdel {job} -t 3").strip() == f"{tb.Layout.from_env().user} has deleted job-array task {job}.3"
    [held] = job_lists(cluster.qstat_xml(), job)
    assert held["tasks"] == "1,2,4"

    cluster.ok(f"qrls {job}")
    eventually(lambda: cluster.gone(job), bool, f"job {job} to end", timeout=60)

    files = cluster.files(f"task.{job}.*")
    assert sorted(files) == [f"task.{job}.{i}" for i in (1, 2, 4)]  # the deleted task never ran
    for i in (1, 2, 4):
        # SGE_TASK_ID, JOB_ID, FIRST, LAST, STEPSIZE, NSLOTS, JOB_NAME, cwd (-cwd)
        assert files[f"task.{job}.{i}"].split("\n")[:-1] == [str(i), str(job), "1", "4", "1", "1", "sge_array",
                                                             cluster.dir]

    # One record per task that ran; none for the task deleted while pending.
    records = eventually(lambda: cluster.qacct(job), lambda r: len(r) >= 3, f"qacct -j {job}", timeout=30)
    by_task = {r["taskid"]: r for r in records}
    assert sorted(by_task) == ["1", "2", "4"]
    assert {t: (r["exit_status"], r["failed"], r["jobnumber"]) for t, r in by_task.items()} == {
        "1": ("0", "0", str(job)), "2": ("3", "0", str(job)), "4": ("0", "0", str(job))}


def test_tc_runs_one_task_at_a_time_and_qstat_shows_it_running(cluster: Cluster) -> None:
    job = array_id(cluster.ok(f"{QSUB} -tc 1 -t 1-2 -v GATE=1 task.sh"), "1-2:1")
    # Submitted after it, without -tc: once both of its tasks run, the scheduler has had its chance to
    # start the first job's second task too (there are slots for all four), so that one waits for -tc only.
    free = array_id(cluster.ok(f"{QSUB} -t 1-2 -v GATE=1 task.sh"), "1-2:1")

    def running(doc: ET.Element, of: int) -> list[dict[str, str]]:
        return [e for e in job_lists(doc, of) if e["list"] == "running"]

    def settled(doc: ET.Element) -> bool:  # "t" (being handed to the execd) turns "r" a moment later
        tasks = running(doc, free) + running(doc, job)
        return len(running(doc, free)) == 2 and all(e["state"] == "r" for e in tasks)

    doc = eventually(cluster.qstat_xml, settled, f"both tasks of {free} to run", timeout=90)
    [first] = running(doc, job)
    assert (first["state"], first["queue_name"]) == ("r", f"{gridengine.QUEUE}@{gridengine.host()}")
    [pending] = [e for e in job_lists(doc, job) if e["list"] == "pending"]
    assert (pending["state"], pending["tasks"]) == ("qw", "2" if first["tasks"] == "1" else "1")
    assert re.search(r"^maximum concurrency:\s+1$", cluster.ok(f"qstat -j {job}"), re.M)

    cluster.ok(f"touch gate.{job} gate.{free}")
    eventually(lambda: cluster.gone(job), bool, f"job {job} to end", timeout=60)
    t = times(cluster.ok(f"cat times.{job}"))
    a, b = sorted(("1", "2"), key=lambda task: t[("start", task)])
    assert t[("start", b)] >= t[("end", a)], f"tasks overlapped despite -tc 1: {t}"


def test_hold_jid_waits_for_the_other_job(cluster: Cluster) -> None:
    first = array_id(cluster.ok(f"{QSUB} -t 1-2 -v GATE=1 task.sh"), "1-2:1")
    second = int(cluster.ok(f"{QSUB} -hold_jid {first} task.sh").strip())  # a single job: the bare number

    eventually(cluster.qstat_xml, lambda d: any(e["list"] == "running" for e in job_lists(d, first)),
               f"a task of {first} to run", timeout=30)
    [waiting] = job_lists(cluster.qstat_xml(), second)
    assert (waiting["list"], waiting["state"]) == ("pending", "hqw")
    assert re.search(rf"^jid_predecessor_list:\s+{first}$", cluster.ok(f"qstat -j {second}"), re.M)

    cluster.ok(f"touch gate.{first}")
    eventually(lambda: cluster.gone(second), bool, f"job {second} to end", timeout=60)
    before, after = times(cluster.ok(f"cat times.{first}")), times(cluster.ok(f"cat times.{second}"))
    assert after[("start", "undefined")] >= max(at for (event, _), at in before.items() if event == "end")
    [record] = eventually(lambda: cluster.qacct(second), bool, f"qacct -j {second}", timeout=30)
    assert (record["taskid"], record["exit_status"], record["failed"]) == ("undefined", "0", "0")


def test_unknown_job_id(cluster: Cluster) -> None:
    missing = 9_999_999  # the last id Grid Engine hands out before it wraps; this cluster never gets there
    qstat, qdel, qacct = (cluster.sh(cmd) for cmd in (f"qstat -j {missing}", f"qdel {missing}", f"qacct -j {missing}"))
    assert (qstat.returncode, qstat.stdout, qstat.stderr) == (1, "", f"Following jobs do not exist: \n{missing}\n")
    assert (qdel.returncode, qdel.stdout, qdel.stderr) == (1, f'denied: job "{missing}" does not exist\n', "")
    assert (qacct.returncode, qacct.stderr) == (1, f"error: job id {missing} not found\n")
