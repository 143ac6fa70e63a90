"""One animation over several clusters (core.group) on the test cluster: two presets on different
partitions and nodes (`tbfast` on qcpu; `tbslow` on qhigh, whose module lines take 4 s per task) plus
this computer (`local`). The film ends with every frame rendered exactly once (each task's marker names
the frames it rendered; a chunk another cluster took says `moved`), the faster cluster renders more than
the slow one, the frames land in one folder, and the group can be cancelled as a whole. How much sooner a
group ends than the best cluster alone is measured by bench/fanout_bench.py, not here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from braas_hpc import cli
from braas_hpc.cli_json import SCHEMAS
from braas_hpc.core import registry
from braas_hpc.core.context import job_context
from braas_hpc.core.recovery import read_markers
from braas_hpc.prompts import TerminalPrompts
from tests.conftest import run_cli
from tests.helpers import eventually, make_sample, partition_closed
from tests.video_probe import frame_count

# Tiny frames, one per task, one task at a time per cluster: a cluster's speed is its per-task cost.
FILM = ("--chunk", "1", "--max-parallel", "1", "--resolution-percentage", "10", "--samples", "4")


@pytest.fixture
def two_clusters(testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:  # noqa: ANN001
    """The session's presets plus `tbfast` (the test cluster as it is) and `tbslow` (another partition on
    the other node, 4 s of module loading per task)."""
    config = tmp_path / "config"
    shutil.copytree(os.environ["BRAAS_HPC_CONFIG_DIR"], config)
    monkeypatch.setenv("BRAAS_HPC_CONFIG_DIR", str(config))
    text = (config / "presets" / "testbed.toml").read_text()
    assert 'name = "testbed"' in text and 'partition_cpu = "qcpu"' in text and "env = []" in text
    (config / "presets" / "tbfast.toml").write_text(text.replace('name = "testbed"', 'name = "tbfast"'))
    slow = text.replace('name = "testbed"', 'name = "tbslow"').replace('"qcpu"', '"qhigh"')
    (config / "presets" / "tbslow.toml").write_text(slow.replace("env = []", 'env = ["sleep 4"]'))
    return "tbfast", "tbslow"


def _json(verb: str, *args: str, timeout: float = 600) -> dict:
    done = run_cli(*args, "--json", timeout=timeout)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    document = json.loads(done.stdout)
    jsonschema.validate(document, SCHEMAS[verb])
    return document


def _markers(job: str) -> list[dict[str, object]]:
    async def read() -> list[dict[str, object]]:
        context = job_context(job)  # transports belong to a running loop
        return await read_markers(context.transport, context.paths)

    return asyncio.run(read())


def test_one_film_over_two_clusters_and_this_computer(two_clusters: tuple[str, str], tmp_path: Path) -> None:
    fast, slow = two_clusters
    scene = make_sample(tmp_path / "scene")
    submitted = _json("submit (group)", "submit", str(scene), "--preset", f"{fast},{slow},local",
                      "--frames", "1-12", *FILM)
    group = submitted["job"]
    assert submitted["group"] is True and [m["preset"] for m in submitted["members"]] == [fast, slow, "local"]
    assert len(submitted["submissions"]) == 3 and submitted["pool"] > 0  # first batches out, the rest held back
    first_frames = [s["frames"] for s in submitted["submissions"]]

    came, said = tmp_path / "came", tmp_path / "hook.env"
    final = _json("wait (group)", "wait", group, "--timeout", "400", "--auto-download", "--download-dir", str(came),
                  "--on-done", f"sh -c 'env > {said}'", timeout=500)
    assert final["state"] == "COMPLETED", final
    assert len(list((came / group).glob("frame_*.png"))) == 12  # every cluster's frames, fetched as they landed
    hook = dict(line.split("=", 1) for line in said.read_text().splitlines() if line.startswith("BRAAS_"))
    assert hook["BRAAS_JOB"] == group and hook["BRAAS_STATE"] == "COMPLETED" and hook["BRAAS_FRAMES_DONE"] == "12"
    assert hook["BRAAS_PRESET"] == f"{fast},{slow},local" and hook["BRAAS_OUTPUT_DIR"] == str(came / group)
    assert final["frames_done"] == final["frames_total"] == 12 and final["pool"] == 0 and final["missing"] == ""

    rendered: Counter[int] = Counter()
    by_member: dict[str, int] = {}
    moved: list[list[int]] = []
    for member in final["members"]:
        markers = _markers(member["job"])
        mine = [f for m in markers for f in m.get("rendered", [])]
        rendered.update(mine)
        by_member[member["preset"]] = len(mine)
        assert member["frames_done"] == len(mine), member  # the group counts what the tasks say they rendered
        moved += [m["frames"] for m in markers if m["state"] == "moved"]
    assert sorted(rendered) == list(range(1, 13)) and set(rendered.values()) == {1}, rendered  # each exactly once
    assert by_member[fast] > by_member[slow], (by_member, first_frames)
    # Frames moved after the first batches: more batches than the first ones, or chunks taken.
    assert sum(by_member.values()) == 12 and (moved or registry.get_job(f"{group}.{fast}").rounds >= 1)
    for chunk in moved:  # a chunk taken from a cluster was rendered by another one, once
        assert all(rendered[f] == 1 for f in chunk)

    dest = tmp_path / "frames"
    got = _json("download (group)", "download", group, "--dest", str(dest))
    assert got["downloaded"] == 12
    assert sorted(p.name for p in dest.glob("frame_*.png")) == [f"frame_{f:06d}.png" for f in range(1, 13)]
    summary = json.loads(Path(got["summary"]).read_text())  # what each cluster rendered, from its tasks' markers
    assert summary["frames"] == "1-12" and summary["wall_seconds"] > 0
    assert {c["preset"]: c["frames_rendered"] for c in summary["clusters"]} == by_member

    movie = _json("video", "video", group, "--dest", str(dest))  # the film's movie, made here from every cluster's
    assert movie["made_on"] == "here" and movie["gaps"] == [] and Path(movie["video"]).is_file()
    assert frame_count(Path(movie["video"])) == 12

    shown = _json("status (group)", "status", group)["jobs"][0]
    assert shown["state"] == "COMPLETED" and shown["moves"] == []  # an ended group: nothing handed out any more
    logs = _json("logs (group)", "logs", group)
    assert [m["job"] for m in logs["members"]] == [m["job"] for m in final["members"]]
    everything = _json("status", "status")  # no job named: the groups too, an ended one as last seen
    assert [(g["job"], g["state"], g["frames_done"]) for g in everything["groups"]] == [(group, "COMPLETED", 12)]

    dry = run_cli("submit", str(scene), "--preset", f"{fast},{slow}", "--dry-run")
    assert dry.returncode == 2 and "run it with each preset of the group (tbfast, tbslow)" in dry.stderr, dry.stderr
    refused = run_cli("resubmit", group)
    assert refused.returncode == 2 and "runs over several clusters" in refused.stderr, refused.stderr
    forgotten = _json("forget", "forget", group)["forgotten"]
    assert sorted(forgotten) == sorted(m["job"] for m in final["members"])
    gone = run_cli("status", group)
    assert gone.returncode == 2 and "no job named" in gone.stderr


def test_a_group_is_cancelled_on_every_cluster(two_clusters: tuple[str, str], tmp_path: Path) -> None:
    fast, slow = two_clusters
    scene = make_sample(tmp_path / "scene")
    submitted = _json("submit (group)", "submit", str(scene), "--preset", f"{slow},{fast}", "--frames", "1-20",
                      *FILM)
    group = submitted["job"]
    cancelled = _json("cancel", "cancel", group)
    assert len(cancelled["cancelled"]) >= 2  # every member's array
    after = _json("status (group)", "status", group)["jobs"][0]
    assert after["state"] == "CANCELLED" and after["moves"] == []  # nothing handed out after a cancel
    assert after["pool"] == submitted["pool"]
    final = _json("wait (group)", "wait", group, "--timeout", "120", timeout=200)
    assert final["state"] == "CANCELLED"
    watched = run_cli("status", "--watch", group, timeout=120)  # an ended group: its lines once, then done
    assert watched.returncode == 0 and f"{group}  CANCELLED" in watched.stdout, watched.stdout + watched.stderr
    assert all(m["state"] == "CANCELLED" for m in final["members"]), final["members"]


def test_chunks_taken_from_a_cluster_whose_queue_is_stuck_are_cancelled_there(
        two_clusters: tuple[str, str], testbed, remote, tmp_path: Path) -> None:  # noqa: ANN001
    """tbslow's partition closed: its first batch waits for good. The fast cluster takes those chunks, and
    each one's task on tbslow is cancelled then and there (not when the film ends), its marker `moved`
    written by the driver since the task never ran."""
    fast, slow = two_clusters
    scene = make_sample(tmp_path / "scene")
    with partition_closed(testbed.slurm_conf, "qhigh"):
        submitted = _json("submit (group)", "submit", str(scene), "--preset", f"{fast},{slow}", "--frames", "1-6",
                          *FILM)
        group, member = submitted["job"], f"{submitted['job']}.{slow}"
        (array,) = registry.get_job(member).scheduler_ids
        assert registry.get_job(member).spec.frames, "tbslow got no first batch to take from"

        def looked() -> dict:
            return _json("status (group)", "status", group)["jobs"][0]

        seen = eventually(looked, lambda doc: any(f"from {slow}" in move for move in doc["moves"]) or
                          doc["state"] != "RUNNING", "a chunk taken from tbslow", timeout=240, every=1)
        assert seen["state"] == "RUNNING", seen  # taken while the film still ran
        moved = [m for m in _markers(member) if m["state"] == "moved"]
        assert moved and all("host" not in m for m in moved), moved  # the driver's words: no task ever ran
        queued = set(remote(f"squeue -h -r -j {array} -o %i").stdout.split())
        assert not {f"{array}_{m['task']}" for m in moved} & queued, (moved, queued)

        final = _json("wait (group)", "wait", group, "--timeout", "300", timeout=400)
    assert final["state"] == "COMPLETED", final
    by_preset = {m["preset"]: m["frames_done"] for m in final["members"]}
    assert by_preset == {fast: 6, slow: 0}, by_preset


def test_a_cluster_whose_host_key_is_not_known_yet_is_asked_about_not_left_out(
        two_clusters: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tbnew`: the test cluster with a known_hosts file of its own, empty. The group's submission asks
    about its key before making anything (no: no group at all; yes: a group on both clusters), and a
    look at the group asks again when the key is gone, where someone can answer."""
    fast, _ = two_clusters
    config = Path(os.environ["BRAAS_HPC_CONFIG_DIR"]) / "presets"
    known = tmp_path / "known_hosts"
    text = (config / f"{fast}.toml").read_text()
    text = re.sub(r'^known_hosts = ".*"$', f'known_hosts = "{known}"', text, flags=re.M)
    (config / "tbnew.toml").write_text(text.replace(f'name = "{fast}"', 'name = "tbnew"'))
    scene = make_sample(tmp_path / "scene")
    asked: list[str] = []

    def run(answer: str, *argv: str) -> int:
        def ask(prompt: str) -> str:
            asked.append(prompt)
            return answer
        return cli.main([*argv, "--json"], TerminalPrompts(ask_secret=ask, ask=ask, interactive=True))

    submit = ("submit", str(scene), "--preset", f"{fast},tbnew", "--frames", "1-4", *FILM)
    groups_before = registry.list_groups()
    capsys.readouterr()
    assert run("n", *submit) == 3
    assert len(asked) == 1 and "Trust the ssh-ed25519 key SHA256:" in asked[0], asked  # its fingerprint
    assert registry.list_groups() == groups_before and not known.exists()  # nothing made, nothing recorded
    capsys.readouterr()
    assert run("yes", *submit) == 0
    group = json.loads(capsys.readouterr().out)["job"]
    assert len(asked) == 2 and known.read_text().strip()  # asked once more, recorded on the yes
    assert [m["preset"] for m in registry.get_group(group)["plan"]["members"]] == [fast, "tbnew"]

    known.write_text("")  # the key forgotten while the group runs
    plain = _json("status (group)", "status", group)["jobs"][0]  # no one to ask: shown, not asked
    (new,) = [m for m in plain["members"] if m["preset"] == "tbnew"]
    assert new["job"], plain  # tbnew got a first batch: a job there to look at
    assert new["state"] == "UNREACHABLE" and "not a known host" in new["error"], new
    capsys.readouterr()
    assert run("yes", "status", group) == 0
    assert len(asked) == 3 and known.read_text().strip()
    shown = json.loads(capsys.readouterr().out)["jobs"][0]
    assert [m["state"] for m in shown["members"] if m["preset"] == "tbnew"] != ["UNREACHABLE"], shown
    assert _json("cancel", "cancel", group)["cancelled"]


class _Door:
    """A port that takes connections and shuts them at once (a login node whose sshd is gone): counted."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.knocks = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.knocks += 1
                conn.close()

    def close(self) -> None:
        self.sock.close()


def test_a_cluster_that_cannot_be_reached_is_tried_once_and_rests(two_clusters: tuple[str, str],
                                                                   tmp_path: Path) -> None:
    """`tbdead`: a cluster whose login node shuts every connection. The group's submission reaches every
    cluster first: tbdead is left out with a warning there and then (not tried a second time to give it
    frames), and the looks that follow do not try it again while it rests; tbfast renders the film."""
    fast, _ = two_clusters
    door = _Door()
    try:
        config = Path(os.environ["BRAAS_HPC_CONFIG_DIR"]) / "presets"
        text = (config / f"{fast}.toml").read_text()
        text = re.sub(r"^port = \d+$", f"port = {door.port}", text, flags=re.M)
        (config / "tbdead.toml").write_text(text.replace(f'name = "{fast}"', 'name = "tbdead"'))
        alone = run_cli("test", "tbdead")
        assert alone.returncode == 3, alone.stdout + alone.stderr
        one_try = door.knocks  # what one connection attempt costs this door (a back end may knock twice)
        assert one_try >= 1

        scene = make_sample(tmp_path / "scene")
        done = run_cli("submit", str(scene), "--preset", f"{fast},tbdead", "--frames", "1-4", *FILM, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "tbdead could not be reached" in done.stderr and "tried again in 5 min" in done.stderr, done.stderr
        group = json.loads(done.stdout)["job"]
        assert door.knocks == 2 * one_try, "tried more than once by the submission"
        assert registry.get_group(group)["resting"]["tbdead"]["until"] > time.time() + 200
        shown = _json("status (group)", "status", group)["jobs"][0]["members"]
        (dead,) = [m for m in shown if m["preset"] == "tbdead"]
        assert dead["state"] == "UNREACHABLE" and "tried again in 5 min" in dead["error"], dead

        final = _json("wait (group)", "wait", group, "--timeout", "300", timeout=400)
        assert final["state"] == "COMPLETED", final
        assert [m["frames_done"] for m in final["members"] if m["preset"] == fast] == [4], final["members"]
        assert door.knocks == 2 * one_try, "a look tried the resting cluster again"
    finally:
        door.close()
