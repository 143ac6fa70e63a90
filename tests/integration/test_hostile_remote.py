"""Hostile input on the real test cluster: a canary file proves that no value a user controls was run as a
command, by the local side or by the cluster (the same machine: the cluster user is braastb, checked as root).

Few examples, because the cluster is slow-ish; the pure parts are property-tested in
tests/unit/test_hostile_input.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from braas_hpc.core import service
from braas_hpc.core.presets import load_preset
from braas_hpc.core.transport import Transport, make_transport, pool, target_for
from tests.conftest import run_cli
from tests.helpers import check_frame, make_sample, sha256

CANARY = Path(f"/tmp/braas-hostile-canary-{os.getpid()}-{secrets.token_hex(4)}")
INJECTIONS = [f"$(touch {CANARY})", f"`touch {CANARY}`", f"; touch {CANARY};", f"' ; touch {CANARY} ; '",
              f'" ; touch {CANARY} ; "', f"| touch {CANARY}", f"& touch {CANARY} &"]
# File names (no '/'): each injection made relative, plus quotes, spaces, backslashes, newlines and non-ASCII.
NAMES = [i.replace("/", "_") for i in INJECTIONS] + ["a b", "it's", 'say "hi"', "back\\slash", "line\nbreak",
                                                     "ümlaut ✓ 日本", "-n", "--", "*", "$HOME", "%j %A"]
Remote = Callable[..., CompletedProcess[str]]


@pytest.fixture(autouse=True)
def no_canary() -> object:
    CANARY.unlink(missing_ok=True)
    yield
    assert not CANARY.exists(), f"an injected command ran: {CANARY} exists"


def _transport(backend: str) -> Transport:
    return make_transport(backend, target_for(load_preset("testbed")))


@pytest.mark.parametrize("backend", ["asyncssh", "paramiko", "openssh"])
def test_hostile_remote_paths_are_plain_names(testbed, remote: Remote, tmp_path: Path,  # noqa: ANN001
                                              backend: str) -> None:
    """Remote paths with shell syntax in them, through run (argv), put, get and listdir, on every back end."""
    base = f"{testbed.workdir}/hostile-{backend}-{secrets.token_hex(3)}"
    local = tmp_path / "local.bin"
    local.write_bytes(b"hostile bytes\n" * 100)

    async def work() -> tuple[list[str], list[bytes]]:
        async with _transport(backend) as t:
            await t.run(["mkdir", "-p", "--", base])
            await t.run(["touch", "--", *(f"{base}/{n}" for n in NAMES[:len(INJECTIONS)])])
            got = []
            for i, name in enumerate(NAMES[len(INJECTIONS):]):
                await t.put(local, f"{base}/{name}")
                back = tmp_path / f"back-{i}"
                await t.get(f"{base}/{name}", back)
                got.append(back.read_bytes())
            listed = sorted(e.name for e in await t.listdir(base))
            return listed, got

    listed, got = asyncio.run(work())
    assert listed == sorted(NAMES)
    assert got == [local.read_bytes()] * (len(NAMES) - len(INJECTIONS))
    # The cluster's own view of the names (as root would see them): exactly these files, nothing else.
    seen = remote(f"find {shlex.quote(base)} -mindepth 1 -printf '%f\\0'")
    assert sorted(seen.stdout.split("\0")[:-1]) == sorted(NAMES)
    remote(f"rm -rf -- {shlex.quote(base)}")


def test_hostile_fields_are_refused_before_anything_is_sent(testbed, tmp_path: Path) -> None:  # noqa: ANN001
    scene = make_sample(tmp_path / "project")
    for args, named in ((["--account", f"braas$(touch {CANARY})"], "account"),
                        (["--partition", f"qcpu; touch {CANARY}"], "partition"),
                        (["--email", f"`touch {CANARY}`@example.org"], "e-mail"),
                        (["--email", "me@example.org\n#SBATCH --uid=0"], "e-mail"),
                        (["--email", "me@example.org\n"], "e-mail"),  # once accepted: `$` matched before "\n"
                        (["--frames", f"1;touch {CANARY}"], "frame spec")):
        frames = [] if "--frames" in args else ["--frames", "1"]
        done = run_cli("submit", str(scene), "--preset", "testbed", *frames, *args)
        assert done.returncode == 2 and named in done.stderr, (args, done.stderr)
    assert json.loads(run_cli("status", "--json").stdout)["jobs"] == []  # nothing was registered, so nothing submitted


def test_hostile_scene_and_project_names_render(testbed, remote: Remote, tmp_path: Path) -> None:  # noqa: ANN001
    """A real job from a scene whose folder and file name are full of shell syntax, with a hostile project
    name and an e-mail: it renders, its frame downloads into a hostile folder, and nothing ran."""
    project_dir = tmp_path / f"pro ject {INJECTIONS[0]} ü"  # '/' in it: nested folders
    sample = make_sample(project_dir)
    scene = sample.with_name(f"sc'ène \"{INJECTIONS[1].replace('/', '_')}\" ; ✓.blend")
    shutil.move(sample, scene)  # the texture stays beside it, referenced relatively

    async def submit() -> service.SubmitResult:
        try:
            return await service.submit(service.SubmitRequest(
                scene=scene, preset="testbed", frames="1-2", chunk=2, project=f"../{INJECTIONS[2]}\n$(id)",
                email="render+hostile@example.org"))
        finally:
            await pool.close_all()

    result = asyncio.run(submit())
    job = result.job
    assert job.startswith("touch_tmp_braas-hostile-canary-") and "/" not in job and "$" not in job
    script = remote(f"cat {shlex.quote(result.job_dir)}/job.sh").stdout
    assert "#SBATCH --mail-user=render+hostile@example.org" in script.splitlines()
    waited = run_cli("wait", job, "--timeout", "600", timeout=700)
    assert waited.returncode == 0, waited.stdout + waited.stderr

    # Names in out/ that are not our frames, some with shell syntax, one with a newline: never fetched.
    out = f"{result.job_dir}/out"
    odd = ["frame_000001.png\n", f"{INJECTIONS[3].replace('/', '_')}.png", "..\\frame_000002.png",
           "frame_000002.png; touch x"]
    made = remote(" && ".join(f"cp -- {shlex.quote(out)}/frame_000001.png {shlex.quote(f'{out}/{n}')}" for n in odd))
    assert made.returncode == 0, made.stderr
    status = json.loads(run_cli("status", job, "--json").stdout)["jobs"][0]
    assert status["state"] == "COMPLETED" and status["frames_done"] == 2

    dest = tmp_path / f"down $(touch {CANARY}) '\"" / "frames"  # '/' in it: nested folders
    got = run_cli("download", job, "--dest", str(dest), "--json")
    assert got.returncode == 0, got.stderr
    report = json.loads(got.stdout)
    # Hidden names (frames still being written) are skipped without a word; the others are reported.
    assert report["downloaded"] == 2 and sorted(report["ignored"]) == sorted(n for n in odd if n[0] != "."), report
    assert sorted(p.name for p in dest.iterdir()) == ["frame_000001.png", "frame_000002.png"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["frames"]
    for frame in dest.iterdir():
        check_frame(frame)
    assert sha256(dest / "frame_000001.png") == remote(f"sha256sum {shlex.quote(out)}/frame_000001.png").stdout[:64]
