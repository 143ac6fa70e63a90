"""Grid Engine's face, from answers captured on the test cluster's Son of Grid Engine 8.1.9
(tests/testbed/gridengine.md): states, accounting records, submit ids, directives."""

from __future__ import annotations

import subprocess

import pytest

from braas_hpc.core.errors import SchedulerError
from braas_hpc.core.jobs import JobPaths, JobSpec
from braas_hpc.core.monitor import answer_is_whole, uncovered_tasks
from braas_hpc.core.presets import preset_from_dict
from braas_hpc.core.schedulers import scheduler_for
from braas_hpc.core.schedulers.base import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, TIMEOUT, Round
from braas_hpc.core.schedulers.sge import GridEngineScheduler, parse_qacct, parse_qstat, state_of, state_of_record

SGE = GridEngineScheduler()
# `qsub -terse -t 1-4 -tc 1`: task 1 running, 2-4 pending.
QSTAT_XML = """<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>9</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>cap.sh</JB_name>
      <JB_owner>braastb</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-12-07T03:21:07</JAT_start_time>
      <queue_name>all.q@vm</queue_name>
      <slots>1</slots>
      <tasks>1</tasks>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>9</JB_job_number>
      <JAT_prio>0.00000</JAT_prio>
      <JB_name>cap.sh</JB_name>
      <JB_owner>braastb</JB_owner>
      <state>qw</state>
      <JB_submission_time>2026-12-07T03:21:07</JB_submission_time>
      <queue_name></queue_name>
      <slots>1</slots>
      <tasks>2-4:1</tasks>
    </job_list>
  </job_info>
</job_info>
"""
# `qdel` of that job while task 1 ran (tasks 2-4, pending, leave no record), and a finished 2-task array.
QACCT_CANCELLED = """==============================================================
qname        all.q
hostname     vm
jobname      cap.sh
jobnumber    9
taskid       1
failed       100 : assumedly after job
exit_status  137                  (Killed)
ru_wallclock 4s
category     NONE
"""
QACCT_DONE = """==============================================================
qname        all.q
hostname     vm
jobname      sample-20261207-032052-5dc9
jobnumber    7
taskid       2
failed       0
exit_status  0
ru_wallclock 2s
category     -q all.q -l h_rt=3600
==============================================================
qname        all.q
hostname     vm
jobname      sample-20261207-032052-5dc9
jobnumber    7
taskid       1
failed       0
exit_status  0
ru_wallclock 2s
category     -q all.q -l h_rt=3600
"""


def test_qstat_lists_running_tasks_and_pending_ranges() -> None:
    states = parse_qstat(QSTAT_XML)
    assert [(s.job_id, s.task, s.state) for s in states] == [("9", "1", RUNNING), ("9", "[2,3,4]", PENDING)]
    assert uncovered_tasks(states, 4) == set() and answer_is_whole(states, 4)
    after_qdel_t = QSTAT_XML.replace("<tasks>2-4:1</tasks>", "<tasks>2,3</tasks>")  # `qdel 9 -t 4`
    assert uncovered_tasks(parse_qstat(after_qdel_t), 4) == {4}
    stepped = QSTAT_XML.replace("<tasks>2-4:1</tasks>", "<tasks>2-10:4</tasks>")
    assert parse_qstat(stepped)[1].task == "[2,6,10]"
    with pytest.raises(SchedulerError, match="no XML"):
        parse_qstat("error: commlib error: got select error (Connection refused)")


def test_accounting_records_say_how_each_task_ended() -> None:
    assert [(s.task, s.state, s.exit_code) for s in parse_qacct("9", QACCT_CANCELLED)] == [("1", CANCELLED, "137")]
    done = parse_qacct("7", QACCT_DONE)
    assert sorted((s.task, s.state) for s in done) == [("1", COMPLETED), ("2", COMPLETED)]
    assert parse_qacct("8", QACCT_DONE) == []  # another job's records are not this one's
    assert parse_qacct("42", "error: job id 42 not found\n") == []
    plain = QACCT_DONE.replace("taskid       2", "taskid       undefined")
    assert parse_qacct("7", plain)[0].task == ""  # a job without an array


@pytest.mark.parametrize(("failed", "status", "state"), [
    ("0", "0", COMPLETED), ("0", "3", FAILED), ("37 : qmaster enforced h_rt, h_cpu, or h_vmem limit", "137", TIMEOUT),
    ("100 : assumedly after job", "137", CANCELLED), ("25 : rescheduling", "99", FAILED),
    ("30 : application error returned", "100", FAILED), ("", "", FAILED)])
def test_record_states(failed: str, status: str, state: str) -> None:
    assert state_of_record(failed, status) == state


def test_state_letters() -> None:
    assert [state_of(s) for s in ("qw", "hqw", "Rq", "r", "t", "Rr", "dr", "Eqw", "")] == [
        PENDING, PENDING, PENDING, RUNNING, RUNNING, RUNNING, RUNNING, FAILED, "UNKNOWN"]


def test_one_query_answers_live_and_ended_jobs() -> None:
    answer = f"@@qstat\n{QSTAT_XML}@@qacct 7\n{QACCT_DONE}@@qacct 8\nerror: job id 8 not found\n"
    states = SGE.parse_query(answer)
    assert sorted((s.job_id, s.task, s.state) for s in states) == [
        ("7", "1", COMPLETED), ("7", "2", COMPLETED), ("9", "1", RUNNING), ("9", "[2,3,4]", PENDING)]
    assert SGE.query_argv(["7", "9"])[-2:] == ["7", "9"]  # ids as arguments, never inside the script


def test_submit_ids_and_options() -> None:
    assert SGE.parse_submit("42\n") == "42" and SGE.parse_submit("42.1-3:1\n") == "42"
    with pytest.raises(SchedulerError, match="Unable to run job"):
        SGE.parse_submit("Unable to run job: denied: \"1abc\" is not a valid object name\n")
    argv = SGE.submit_argv("/j.sh", 2, SGE.after_argv(["41", "43"]))
    assert argv[-7:] == ["qsub", "-terse", "-v", "BRAAS_TASK_ID=2", "-hold_jid", "41,43", "/j.sh"]
    assert SGE.exclude_argv(["n1", "n2"]) == ["-l", "h=!(n1|n2)"] and SGE.exclude_argv([]) == []
    assert scheduler_for("sge").label == "Grid Engine"


SPEC = JobSpec(name="9shot", preset="site", scene="/s.blend", frames=tuple(range(1, 9)),
               tasks=((1, 2), (3, 4), (5, 6), (7, 8)), walltime_min=90, account="proj", partition="all.q",
               max_parallel=2, cpus=8, gpus=1, memory_gb=16, email="me@example.org")
PRESET = preset_from_dict({"name": "site", "scheduler": "sge", "host": "login", "workdir": "/w"}, "test")


def test_directives_ask_grid_engine_for_the_job() -> None:
    lines = SGE.directives(SPEC, PRESET, JobPaths("/w/braas-hpc", "9shot"), Round(0, 4))
    assert lines[:2] == ["#$ -N j9shot", "#$ -S /bin/bash"]  # a name must not start with a digit
    for wanted in ("-q all.q", "-A proj", "-t 1-4", "-tc 2", "-l h_rt=01:30:00", "-pe smp 8", "-l gpu=1",
                   "-l mem_free=16G", "-j y", "-o /w/braas-hpc/jobs/9shot/log/sge-$JOB_ID.$TASK_ID.out",
                   "-M me@example.org", "-m ea"):
        assert f"#$ {wanted}" in lines, wanted
    single = SGE.directives(SPEC, PRESET, JobPaths("/w/braas-hpc", "9shot"), Round(1, 1))
    assert "#$ -t 1-1" in single and not any(line.startswith("#$ -tc ") for line in single)  # -tc of no use


def test_a_job_without_an_array_takes_its_task_as_given() -> None:
    """SGE_TASK_ID is the word "undefined" outside an array: the task number comes from -v."""
    for env, expected in (({"SGE_TASK_ID": "undefined", "BRAAS_TASK_ID": "3", "JOB_ID": "5"}, "3|5|0"),
                          ({"SGE_TASK_ID": "2", "JOB_ID": "5", "NSLOTS": "8"}, "2|5|8")):
        lines = ["set -u", *SGE.task_environment(), 'echo "$BRAAS_TASK_ID|$BRAAS_JOB_ID|$BRAAS_THREADS"']
        done = subprocess.run(["bash", "-c", "\n".join(lines)], env={"PATH": "/usr/bin:/bin", **env},
                              capture_output=True, text=True, check=True, timeout=30)
        assert done.stdout.strip() == expected
