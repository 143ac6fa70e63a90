"""`braas-hpc install` and `braas-hpc workdir` on the real test cluster (OpenSSH + Slurm on loopback).

The test cluster has no internet: a tiny fake Blender archive is served over HTTP on 127.0.0.1 by a
server that honours Range requests (Python's own http.server does not), so resuming is real.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import secrets
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from braas_hpc.core.presets import load_preset
from braas_hpc.core.scripts import scripts_version, shipped_scripts
from tests.conftest import run_cli
from tests.helpers import cluster_file_when_written
from tests.retarget import to_toml
from tests.testbed import testbed as tb

FAKE_VERSION = "Blender 9.9.9"


def fake_blender(directory: Path, name: str = "blender-9.9.9-linux-x64") -> Path:
    """A Blender-shaped archive: one top directory with an executable `blender` (and some bulk)."""
    archive = directory / f"{name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for member, data, mode in ((f"{name}/blender", f"#!/bin/sh\necho '{FAKE_VERSION}'\n".encode(), 0o755),
                                   (f"{name}/bulk.bin", os.urandom(300_000), 0o644)):
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return archive


class RangeHandler(SimpleHTTPRequestHandler):
    ranges: list[str] = []

    def send_head(self):  # noqa: ANN201 - the standard library's shape
        header = self.headers.get("Range")
        if not header:
            return super().send_head()
        type(self).ranges.append(header)
        path = Path(self.translate_path(self.path))
        data = path.read_bytes()
        start = int(header.removeprefix("bytes=").split("-")[0])
        if start >= len(data):
            self.send_error(416)
            return None
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        return io.BytesIO(data[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    served = tmp_path / "served"
    served.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def fresh(own_workdir) -> str:  # noqa: ANN001
    """A preset like `testbed` with its own, empty working directory: an install from scratch."""
    return own_workdir("tbinst")


def _json(*args: str) -> dict:
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def _snapshot(remote, directory: str) -> str:  # noqa: ANN001
    """Every entry under a directory on the cluster with its inode, size, mode and change times: a file
    rewritten, replaced, touched or chmodded shows up here, whatever the CLI reports."""
    done = remote(f"cd {directory} && find . -printf '%P %i %s %m %T@ %C@\\n' | sort")
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    return done.stdout


def test_install_from_scratch_then_no_op_then_repair(fresh: str, remote) -> None:  # noqa: ANN001
    first = _json("install", fresh)
    expected = sorted([*shipped_scripts(), "MANIFEST.json"])
    assert sorted(first["uploaded"]) == expected and first["changed"] is True
    assert first["scripts_dir"].endswith(f"/braas-hpc-braastb/scripts/{scripts_version()}")
    listing = remote(f"cd {first['scripts_dir']} && sha256sum *").stdout
    for name, path in shipped_scripts().items():
        assert f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {name}" in listing

    before = _snapshot(remote, first["scripts_dir"])
    second = _json("install", fresh)
    assert second["uploaded"] == [] and second["changed"] is False and sorted(second["unchanged"]) == expected
    plain = run_cli("install", fresh)
    assert plain.returncode == 0 and "already installed" in plain.stdout and "nothing sent" in plain.stdout
    assert _snapshot(remote, first["scripts_dir"]) == before, "a second install changed files on the cluster"
    print(f"install: first {first['seconds']:.2f} s, second {second['seconds']:.2f} s")

    # A damaged install (an edited render task, a lost helper) is repaired: only those two files go again.
    scripts = first["scripts_dir"]
    assert remote(f"echo '# edited' >> {scripts}/render_task.py && rm {scripts}/devices.py").returncode == 0
    third = _json("install", fresh)
    assert sorted(third["uploaded"]) == ["devices.py", "render_task.py"]


def test_submission_repairs_stale_scripts_and_the_job_runs(fresh: str, remote, sample_scene: Path) -> None:  # noqa: ANN001
    """A version mismatch on the cluster (the installed render task differs) is fixed by the submission."""
    scripts = _json("install", fresh)["scripts_dir"]
    assert remote(f"printf 'raise SystemExit(3)\\n' > {scripts}/render_task.py").returncode == 0
    submitted = _json("submit", str(sample_scene), "--preset", fresh, "--frames", "1")
    assert submitted["scripts_updated"] == ["render_task.py"] and submitted["finish_id"].isdigit()
    waited = run_cli("wait", submitted["job"], "--timeout", "600", timeout=700)
    assert waited.returncode == 0, waited.stdout + waited.stderr  # the repaired task rendered the frame
    job_dir = submitted["job_dir"]
    summary = json.loads(cluster_file_when_written(remote, f"{job_dir}/summary.json"))
    assert summary["frames_ok"] == 1 and summary["missing"] == [] and summary["thumbnail"] == "thumb.jpg"
    status = json.loads(run_cli("status", submitted["job"], "--json").stdout)["jobs"][0]
    assert status["state"] == "COMPLETED" and status["summary"] is True


def test_blender_download_checked_resumed_and_idempotent(fresh: str, remote, http_dir) -> None:  # noqa: ANN001
    served, url = http_dir
    archive = fake_blender(served)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    link = f"{url}/{archive.name}"

    wrong = run_cli("install", fresh, "--blender-url", link, "--blender-sha256", "0" * 64)
    assert wrong.returncode == 1 and f"its SHA-256 is {digest}, not the {'0' * 64} given" in wrong.stderr
    root = f"{load_preset(fresh).workdir}/braas-hpc-braastb/blender"
    assert remote(f"ls -A {root}/downloads; test -e {root}/blender-9.9.9-linux-x64").stdout.strip() == ""

    # An interrupted download: the first 100 kB are there; the rest is fetched with a Range request.
    half = archive.read_bytes()[:100_000]
    command = f"mkdir -p {root}/downloads && cat > {root}/downloads/{archive.name}.part"
    put = subprocess.run(tb.ssh_command(tb.Layout.from_env(), command), input=half, capture_output=True, timeout=60)
    assert put.returncode == 0, put.stderr
    first = _json("install", fresh, "--blender-url", link, "--blender-sha256", digest)["blender"]
    assert first["changed"] is True and first["version"] == FAKE_VERSION and first["resumed_from"] == 100_000
    assert "bytes=100000-" in RangeHandler.ranges
    assert first["blender"] == f"{root}/blender-9.9.9-linux-x64/blender"
    # The stamp: the archive's SHA-256 and the unpacked tree's hash, which the record keeps too.
    stamp = f"{digest} {first['tree_sha256']}"
    assert remote(f"cat {root}/blender-9.9.9-linux-x64/.braas-installed").stdout.strip() == stamp

    before = _snapshot(remote, root)
    again = _json("install", fresh, "--blender-url", link, "--blender-sha256", digest)["blender"]
    assert again["changed"] is False and again["version"] == FAKE_VERSION
    assert _snapshot(remote, root) == before, "a second install changed files on the cluster"
    # Jobs now start this Blender.
    plan = _json("submit", str(Path(__file__).resolve().parents[2] / "examples/sample/sample.blend"), "--preset",
                 fresh, "--frames", "1", "--dry-run")
    assert f"exec {first['blender']} -b -Y" in plan["script"] and f"exec {first['blender']} -b" in plan["finish_script"]


def test_blender_upload_path_and_module(fresh: str, remote, tmp_path: Path) -> None:  # noqa: ANN001
    archive = fake_blender(tmp_path, "blender-9.9.8-linux-x64")
    up = _json("install", fresh, "--blender-upload", str(archive))["blender"]
    assert up["changed"] is True and up["version"] == FAKE_VERSION and up["uploaded_bytes"] == archive.stat().st_size
    assert _json("install", fresh, "--blender-upload", str(archive))["blender"]["changed"] is False

    missing = run_cli("install", fresh, "--blender-path", "/nowhere/blender")
    assert missing.returncode == 2 and "is not an executable file on the cluster" in missing.stderr
    named = _json("install", fresh, "--blender-path", up["blender"])["blender"]
    assert named["source"] == {"path": up["blender"]} and named["version"] == FAKE_VERSION
    bad = run_cli("install", fresh, "--blender-module", "Blender; rm -rf ~")
    assert bad.returncode == 2 and "module name" in bad.stderr
    both = run_cli("install", fresh, "--blender-path", "/a", "--blender-module", "B")
    assert both.returncode == 2 and "one Blender source" in both.stderr


def test_workdir_is_found_shown_and_set_only_on_request(testbed, remote) -> None:  # noqa: ANN001
    base = load_preset("testbed")
    name = f"tbwd-{secrets.token_hex(3)}"
    path = Path(base.source).parent / f"{name}.toml"
    preset = dataclasses.replace(base, name=name, workdir="", workdir_hint="$HOME/work, or /home/{user}/work",
                                 workdir_command=("printenv", "HOME"))
    path.write_text(to_toml(preset))
    before = path.read_text()
    found = {c["path"]: c for c in _json("workdir", name)["candidates"]}
    assert found["/home/braastb"]["source"] == "printenv HOME" and found["/home/braastb"]["writable"] is True
    assert found["/home/braastb/work"]["source"] == "hint /home/{user}/work" and found["/home/braastb/work"]["exists"]
    assert path.read_text() == before  # shown, never silently written
    plain = run_cli("workdir", name)
    assert "nothing was changed" in plain.stdout and "/home/braastb/work" in plain.stdout

    refused = run_cli("workdir", name, "--set", "/home/braastb/nowhere")
    assert refused.returncode == 2 and "not a directory" in refused.stderr and path.read_text() == before
    chosen = _json("workdir", name, "--set", "/home/braastb/work")
    assert chosen["file"] == str(path) and load_preset(name).workdir == "/home/braastb/work"


def test_site_scripts_from_git(fresh: str, remote) -> None:  # noqa: ANN001
    """A site that keeps its own scripts: cloned from its repository and branch, then kept up to date."""
    preset = load_preset(fresh)
    repo = f"{preset.workdir}/site-scripts.git"
    work = f"{preset.workdir}/site-scripts-work"
    setup = f"git init -q --bare -b main {repo} && git init -q -b main {work}"
    assert remote(setup).returncode == 0
    for name, path in shipped_scripts().items():
        put = subprocess.run(tb.ssh_command(tb.Layout.from_env(), f"cat > {work}/{name}"), input=path.read_bytes(),
                             capture_output=True, timeout=60)
        assert put.returncode == 0, put.stderr
    commit = (f"cd {work} && git add -A && git -c user.name=site -c user.email=s@example.org commit -qm v1 && "
              f"git push -q {repo} main")
    assert remote(commit).returncode == 0, remote(commit).stderr
    Path(preset.source).write_text(to_toml(dataclasses.replace(preset, scripts_git=repo, scripts_branch="main")))

    first = _json("install", fresh)
    assert first["scripts_source"] == repo and first["changed"] is True
    assert first["scripts_dir"] == f"{preset.workdir}/braas-hpc-braastb/scripts/git-main"
    assert _json("install", fresh)["changed"] is False
    bump = (f"cd {work} && echo '# site change' >> render_task.py && "
            f"git -c user.name=site -c user.email=s@example.org commit -qam v2 && git push -q {repo} main")
    assert remote(bump).returncode == 0
    assert _json("install", fresh)["changed"] is True
    assert remote(f"tail -1 {first['scripts_dir']}/render_task.py").stdout.strip() == "# site change"
    plan = _json("submit", str(Path(__file__).resolve().parents[2] / "examples/sample/sample.blend"), "--preset",
                 fresh, "--frames", "1", "--dry-run")
    assert f"-P {first['scripts_dir']}/render_task.py" in plan["script"]
