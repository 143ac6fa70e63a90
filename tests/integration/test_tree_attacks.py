"""The cluster tree is the user's alone, tried as another member of the same project would.

The workdir here is a project directory (group `braastb`, group-writable, setgid), as site presets
put it. A second Unix user, `braasatk`, made for these tests in the user's group and removed
afterwards, plants each attack: its own directory under the user's root name, a symbolic link there,
the whole tree swapped after submission; the user's own tree opened by mistake, a changed render task
and a store file with other bytes stand for what the attacker could do where a tree is open. Each is
refused with a message that says what and how to fix it, and nothing of the attacker's runs (the
planted code would create a canary file).

Jobs are submitted with `--begin=now+1hour` so they wait; a test that needs the job to start releases
it (scontrol) after planting its attack, so the order is certain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import grp
import json
import os
import pwd
import secrets
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from braas_hpc.core.presets import load_preset
from braas_hpc.core.scripts import scripts_version
from braas_hpc.core.tree import UntrustedTree
from tests.client_side import on_cluster_host
from tests.conftest import run_cli
from tests.helpers import make_sample, sha256, temporary_user
from tests.integration.test_install import fake_blender
from tests.retarget import to_toml

ATTACKER = "braasatk"
PAYLOAD = "import pathlib; pathlib.Path({canary!r}).write_text('the attacker ran')\n"


@pytest.fixture(scope="module")
def attacker(testbed) -> Iterator[str]:  # noqa: ANN001
    """Another member of the user's project: the user's primary group is its primary group."""
    group = grp.getgrgid(pwd.getpwnam(testbed.user).pw_gid).gr_name
    with temporary_user(ATTACKER, group) as name:
        yield name


def as_attacker(script: str) -> subprocess.CompletedProcess[str]:
    # Another user of the cluster: on the cluster's side (tests/client_side.py).
    return subprocess.run(on_cluster_host(["runuser", "-u", ATTACKER, "--", "/bin/sh", "-c", f"umask 002; {script}"]),
                          capture_output=True, text=True, timeout=60)


@dataclasses.dataclass
class Project:
    preset: str
    workdir: str
    root: str
    canary: str
    jobs: list[dict]

    def submit(self, scene: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = run_cli("submit", str(scene), "--preset", self.preset, "--frames", "1", "--json")
        if check:
            assert done.returncode == 0, done.stderr
        if done.returncode == 0:
            self.jobs.append(json.loads(done.stdout))
        return done


@pytest.fixture
def project(testbed, remote, attacker: str, tmp_path: Path) -> Iterator[Project]:  # noqa: ANN001
    """A preset whose workdir is a fresh project directory; its jobs wait an hour unless released."""
    base = load_preset("testbed")
    name = f"tbproj-{secrets.token_hex(3)}"
    workdir = f"{base.workdir}/{name}"
    assert remote(f"mkdir -p {workdir} && chmod 2770 {workdir}").returncode == 0
    (Path(base.source).parent / f"{name}.toml").write_text(to_toml(dataclasses.replace(
        base, name=name, workdir=workdir, extra_directives=("--begin=now+1hour",))))
    canary = f"/tmp/braasatk-canary-{secrets.token_hex(4)}"
    project = Project(name, workdir, f"{workdir}/braas-hpc-{testbed.user}", canary, [])
    try:
        yield project
    finally:
        ids = [i for job in project.jobs for i in (*job["scheduler_ids"], job["finish_id"]) if i]
        if ids:
            subprocess.run(["scancel", *ids], env={**os.environ, "SLURM_CONF": str(testbed.slurm_conf)},
                           capture_output=True, timeout=60)
        subprocess.run(on_cluster_host(["rm", "-rf", "--", workdir]), check=False, timeout=120)
        (Path(base.source).parent / f"{name}.toml").unlink(missing_ok=True)
        assert not Path(canary).exists(), "the attacker's code ran"


def release_and_wait(testbed, job: dict) -> None:  # noqa: ANN001
    """Let the held job start now, as its begin time would, and wait until Slurm has ended it (not
    `braas-hpc wait`: its recovery would add rounds, held like the first)."""
    env = {**os.environ, "SLURM_CONF": str(testbed.slurm_conf)}
    ids = list(job["scheduler_ids"])
    for job_id in ids:
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, check=True,
                       capture_output=True, timeout=60)
    for _ in range(600):  # a bound, not a timing assertion: the job is refused in a second
        queued = subprocess.run(["squeue", "-h", "-j", ",".join(ids)], env=env, capture_output=True, text=True,
                                timeout=60)
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job['job']} never ended")


def first_task_log(testbed, remote, project: Project, job: dict) -> str:  # noqa: ANN001
    """Release the held job, wait until it has ended, and return its first task's log (where a job that
    refuses to run says why)."""
    release_and_wait(testbed, job)
    return remote(f"cat {project.root}/jobs/{job['job']}/log/task-1.log").stdout


def test_a_root_planted_by_another_member_is_refused(project: Project, remote, tmp_path: Path) -> None:  # noqa: ANN001
    planted = as_attacker(f"mkdir -p {project.root}/scripts/{scripts_version()} && "
                          f"printf %s {shlex.quote(PAYLOAD.format(canary=project.canary))} "
                          f"> {project.root}/scripts/{scripts_version()}/render_task.py && "
                          f"chmod -R 2777 {project.root}")
    assert planted.returncode == 0, planted.stderr
    done = project.submit(make_sample(tmp_path / "scene"), check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "is not yours alone, so nothing was sent or run" in done.stderr
    assert f"{project.root} is owned by {ATTACKER}, not by you" in done.stderr
    assert f"mv {project.root} {project.root}.untrusted" in done.stderr
    mine = remote(f"find {project.root} -user braastb").stdout
    assert mine == "", mine  # nothing of the user's went into the attacker's tree

    # The fix the message gives works: the attacker's directory aside, a fresh root of the user's own.
    assert remote(f"mv {project.root} {project.root}.untrusted").returncode == 0
    project.submit(make_sample(tmp_path / "scene2"))
    modes = remote(f"stat -c '%a %U' {project.root} {project.root}/store {project.root}/jobs/*/in").stdout.split("\n")
    # Nothing for the group or others (the setgid bit a project directory passes on stays: it grants nothing).
    assert all(int(line.split()[0], 8) & 0o777 == 0o700 and line.endswith(" braastb") for line in modes if line), modes
    denied = as_attacker(f"ls {project.root}")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


def test_a_symbolic_link_as_root_is_refused(project: Project, remote, tmp_path: Path) -> None:  # noqa: ANN001
    theirs = f"{project.workdir}/theirs"
    assert as_attacker(f"mkdir -m 2777 {theirs} && ln -s {theirs} {project.root}").returncode == 0
    done = project.submit(make_sample(tmp_path / "scene"), check=False)
    assert done.returncode == 1 and f"{project.root} is a symbolic link (owner {ATTACKER})" in done.stderr, done.stderr
    assert remote(f"ls -A {theirs}").stdout == ""


def test_an_open_tree_is_refused_until_closed(project: Project, remote, tmp_path: Path) -> None:  # noqa: ANN001
    scene = make_sample(tmp_path / "scene")
    project.submit(scene)
    assert remote(f"chmod g+w {project.root}/store").returncode == 0
    done = project.submit(scene, check=False)
    assert done.returncode == 1, done.stderr
    assert f"{project.root}/store can be written by other users (mode drwx-w" in done.stderr
    assert "chmod go-w" in done.stderr
    assert remote(f"chmod go-w {project.root}/store").returncode == 0
    project.submit(scene)
    # A root that is only readable by others (made by hand, or by an older release) is closed, not refused.
    assert remote(f"chmod 755 {project.root}").returncode == 0
    project.submit(scene)
    assert int(remote(f"stat -c %a {project.root}").stdout, 8) & 0o777 == 0o700


def test_a_tree_swapped_after_submission_is_refused_by_the_job(testbed, project: Project, remote,  # noqa: ANN001
                                                              tmp_path: Path) -> None:
    project.submit(make_sample(tmp_path / "scene"))
    job = project.jobs[-1]
    name = job["job"]
    # The workdir is the group's: the attacker can rename the user's root (not read it) and put its own there.
    task = f"{project.root}/scripts/{scripts_version()}/render_task.py"
    swap = (f"mv {project.root} {project.workdir}/moved && mkdir -p {project.root}/jobs/{name}/log "
            f"{project.root}/jobs/{name}/in {project.root}/scripts/{scripts_version()} && "
            f"cp /dev/null {project.root}/jobs/{name}/in/scene.blend && "
            f"printf %s {shlex.quote(PAYLOAD.format(canary=project.canary))} > {task} && "
            f"cp /dev/null {project.root}/jobs/{name}/frames.txt && echo 1 > {project.root}/jobs/{name}/frames.txt && "
            f"chmod -R 2777 {project.root}")
    swapped = as_attacker(swap)
    assert swapped.returncode == 0, swapped.stderr
    log = first_task_log(testbed, remote, project, job)
    assert f"braas-hpc: {project.root} is not your own directory any more" in log, log
    assert not Path(project.canary).exists(), "the attacker's render task ran"


def test_a_changed_render_task_is_refused_by_the_job(testbed, project: Project, remote,  # noqa: ANN001
                                                    tmp_path: Path) -> None:
    project.submit(make_sample(tmp_path / "scene"))
    job = project.jobs[-1]
    task = f"{project.root}/scripts/{scripts_version()}/render_task.py"
    # The attacker cannot reach it: the tree is closed.
    denied = as_attacker(f"printf x >> {task}")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    # Changed all the same (by the user, or where a tree was open): the job checks it before running it.
    payload = shlex.quote(PAYLOAD.format(canary=project.canary))
    assert remote(f"chmod u+w {task} && printf %s {payload} >> {task}").returncode == 0
    log = first_task_log(testbed, remote, project, job)
    assert f"braas-hpc: {task} is not the script this job was submitted with" in log, log
    assert remote(f"ls {project.root}/jobs/{job['job']}/out").stdout == ""
    assert not Path(project.canary).exists()
    assert run_cli("install", project.preset).returncode == 0  # what the message says puts it back
    assert remote(f"sha256sum {task}").stdout.split()[0] == sha256(Path(__file__).parents[2] / "cluster_scripts"
                                                                  / "render_task.py")


def test_a_store_file_with_other_bytes_is_never_linked(project: Project, remote, tmp_path: Path) -> None:  # noqa: ANN001
    scene = make_sample(tmp_path / "scene")
    project.submit(scene)
    digest_line = remote(f"find {project.root}/store -type f").stdout.split()
    assert len(digest_line) == 1
    stored = digest_line[0]
    assert as_attacker(f"cp /dev/null {stored}").returncode != 0  # closed to the attacker
    # Other bytes under the right name: the next submission of the same scene finds it but does not use it.
    assert remote(f"chmod u+w {stored} && printf 'not a scene' > {stored}").returncode == 0
    done = project.submit(scene, check=False)
    assert done.returncode == 1, done.stderr
    assert f"store file {stored} holds other bytes than its name says" in done.stderr
    assert f"rm -f {stored}" in done.stderr
    # A symbolic link under the right name, to a file with the right bytes elsewhere: refused too.
    elsewhere = f"{project.workdir}/elsewhere.blend"
    assert remote(f"rm -f {stored} && cp {project.root}/jobs/*/in/scene.blend {elsewhere} && "
                  f"ln -s {elsewhere} {stored}").returncode == 0
    done = project.submit(scene, check=False)
    assert done.returncode == 1 and f"store file {stored} is a symbolic link" in done.stderr, done.stderr
    # The fix the message gives: remove it, and the next submission uploads it afresh.
    assert remote(f"rm -f {stored}").returncode == 0
    again = project.submit(scene)
    assert json.loads(again.stdout)["uploaded_files"] == 1


def test_an_installed_blender_is_checked_by_its_tree_hash(testbed, project: Project, remote,  # noqa: ANN001
                                                         tmp_path: Path) -> None:
    archive = fake_blender(tmp_path)
    first = run_cli("install", project.preset, "--blender-upload", str(archive), "--json")
    assert first.returncode == 0, first.stderr
    installed = json.loads(first.stdout)["blender"]
    tree = installed["tree"]
    assert installed["changed"] is True and len(installed["tree_sha256"]) == 64
    assert as_attacker(f"printf x >> {tree}/blender").returncode != 0  # closed to the attacker

    # The stamp of an older release (or a planted one) holds only the archive's public SHA-256: not enough.
    payload = f"#!/bin/sh\ntouch {project.canary}\n"
    assert remote(f"printf %s {shlex.quote(payload)} > {tree}/blender && "
                  f"echo {sha256(archive)} > {tree}/.braas-installed").returncode == 0
    again = run_cli("install", project.preset, "--blender-upload", str(archive), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["blender"]["changed"] is True  # unpacked afresh, not trusted
    assert "touch" not in remote(f"cat {tree}/blender").stdout
    assert not Path(project.canary).exists()

    # Changed after install, stamp and all: every job recomputes the hash before it starts Blender.
    project.submit(make_sample(tmp_path / "scene"))
    job = project.jobs[-1]
    assert remote(f"printf %s {shlex.quote(payload)} > {tree}/blender").returncode == 0
    log = first_task_log(testbed, remote, project, job)
    assert f"braas-hpc: the Blender in {tree} is not the one braas-hpc install unpacked" in log, log
    assert not Path(project.canary).exists(), "the changed Blender ran"


def test_temp_files_are_new_files_never_written_through(testbed, project: Project, remote,  # noqa: ANN001
                                                       tmp_path: Path) -> None:
    """Links left under the temp names a job used to write (its marker's, its frame's): the job writes
    new files of its own, renders, and the files the links point to keep their bytes."""
    project.submit(make_sample(tmp_path / "scene"))
    job = project.jobs[-1]
    job_dir = f"{project.root}/jobs/{job['job']}"
    victim = f"{project.workdir}/victim.txt"
    plant = (f"echo keep > {victim} && ln -s {victim} {job_dir}/status/task-1.json.part && "
             f"ln -s {victim} {job_dir}/out/.frame_000001.task1.part.png")
    assert remote(plant).returncode == 0
    release_and_wait(testbed, job)
    assert remote(f"cat {victim}").stdout == "keep\n"
    marker = json.loads(remote(f"cat {job_dir}/status/task-1.json").stdout)
    assert marker["state"] == "done" and marker["rendered"] == [1], marker
    assert remote(f"test -s {job_dir}/out/frame_000001.png && test ! -L {job_dir}/out/frame_000001.png"
                  ).returncode == 0


def test_a_replaced_session_directory_is_refused(testbed, project: Project, remote) -> None:  # noqa: ANN001
    """An interactive session's directory swapped for the attacker's (its own node script there): the
    client refuses to write or run anything in it, and the holding job refuses to start its script."""
    from braas_hpc_interactive.core import session
    from braas_hpc_interactive.core.records import NODE_SCRIPT

    record = asyncio.run(session.start(project.preset))
    project.jobs.append({"job": record.name, "scheduler_ids": [record.job_id], "finish_id": ""})
    directory = f"{project.root}/interactive/{record.name}"
    payload = f"#!/bin/bash\ntouch {project.canary}\n"
    swap = (f"mv {project.root} {project.workdir}/moved && mkdir -p {directory} && "
            f"printf %s {shlex.quote(payload)} > {directory}/{NODE_SCRIPT} && chmod -R 2777 {project.root}")
    swapped = as_attacker(swap)
    assert swapped.returncode == 0, swapped.stderr
    with pytest.raises(UntrustedTree, match=f"{project.root} is owned by {ATTACKER}, not by you"):
        asyncio.run(session.install_server(record))
    release_and_wait(testbed, project.jobs[-1])
    said = remote(f"cat {directory}/slurm-*.out").stdout
    assert f"braas-hpc: {project.root} is not your own directory any more" in said, said
    with pytest.raises(UntrustedTree):
        asyncio.run(session.stop(record))
    assert not Path(project.canary).exists(), "the attacker's node script ran"
