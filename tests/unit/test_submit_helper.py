"""The cluster's submission helper (cluster_scripts/submit_helper.py) in a real conversation: the client's
side (core.submit_exchange) over the local transport, so the helper runs as a real process reading a
real stream; the same code runs over SSH in the integration tests. Also under Python 3.6, the oldest
python3 a login node may have (pyenv's, as on these machines)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from braas_hpc.core import submit_exchange
from braas_hpc.core.errors import BraasError, UsageError
from braas_hpc.core.rounds import guarded
from braas_hpc.core.scripts import MANIFEST, shipped_digests
from braas_hpc.core.store import MissingFromStore
from braas_hpc.core.submit_exchange import HELPER, HelperUnavailable, Offer, converse
from braas_hpc.core.transport.local import LocalTransport
from braas_hpc.core.tree import UntrustedTree

PY36 = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions" / "3.6.15" / "bin" / "python3"


def _file(tmp_path: Path, name: str, data: bytes) -> tuple[str, Path]:
    path = tmp_path / "local" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), path


def _store_path(root: Path, digest: str) -> Path:
    return root / "store" / digest[:2] / digest


def _steps(root: Path, digest: str) -> list[dict[str, object]]:
    job = root / "jobs" / "j1"
    submitted = str(job / "submitted")
    return [
        {"run": ["sh", "-c", 'mkdir -p "$1" && ln -f -- "$2" "$1/scene.blend"', "sh", str(job / "in"),
                 str(_store_path(root, digest))]},
        {"write": [[str(job / "job.sh"), "#!/bin/sh\necho render\n"]]},
        {"submit": {"id": r"(?P<id>\d+)(;\S+)?", "arrays": [guarded(["echo", "4242;cluster"], f"{submitted}/r0-array")],
                    "finish": [guarded(["sh", "-c", "exit 1"], f"{submitted}/r0-finish-a"),
                               guarded(["sh", "-c", 'printf "%s" "$1" > "$2"; echo 77', "sh", "@ID0@",
                                        str(job / "after")], f"{submitted}/r0-finish")],
                    "note": ["sh", "-c", 'printf "%s\\n" "$2" > "$1"', "sh", str(job / "finish.txt"), "@FINISH@"]}},
    ]


def _talk(root: Path, offer: Offer, steps: list[dict[str, object]], python: str = "python3",
          installed: bool = False) -> submit_exchange.Outcome:
    return asyncio.run(converse(LocalTransport(), str(root), [str(root / "jobs" / "j1")], offer, steps, python,
                                installed))


def _whole_conversation(tmp_path: Path, python: str) -> None:
    root = tmp_path / "braas-hpc-me"
    digest, scene = _file(tmp_path, "scene.blend", b"BLENDER" * 1000 + os.urandom(300_000))
    offer = Offer({digest: scene}, {digest: scene.stat().st_size}, submit_exchange.scripts_dir(str(root)))
    first = _talk(root, offer, _steps(root, digest), python)

    assert first.stopped is None
    assert first.store_sent == (digest,) and first.sent_bytes > scene.stat().st_size  # the scripts went too
    assert set(first.scripts_sent) == set(shipped_digests())
    stored = _store_path(root, digest)
    assert stored.read_bytes() == scene.read_bytes() and stat.S_IMODE(stored.stat().st_mode) == 0o444
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    scripts = Path(submit_exchange.scripts_dir(str(root)))
    assert (scripts / MANIFEST).is_file()
    for name, want in shipped_digests().items():
        assert hashlib.sha256((scripts / name).read_bytes()).hexdigest() == want, name
    job = root / "jobs" / "j1"
    assert (job / "in" / "scene.blend").stat().st_ino == stored.stat().st_ino
    assert (job / "job.sh").read_text() == "#!/bin/sh\necho render\n"
    submitted = first.results[2]
    assert submitted["arrays"][0]["stdout"].strip() == "4242;cluster"
    assert submitted["finish"]["stdout"].strip() == "77"
    assert (job / "after").read_text() == "4242"  # the array's id, read with the scheduler's pattern
    assert len(submitted["finish_errors"]) == 1  # the first choice failed, the second was taken
    assert (job / "finish.txt").read_text() == "77\n"
    assert not list(root.rglob("*part"))

    # Again, from the installed helper: nothing is sent, and the guarded submissions answer from their
    # records (the array's command would now print another id if it ran).
    steps = _steps(root, digest)
    steps[2]["submit"]["arrays"] = [guarded(["echo", "9999"], str(job / "submitted" / "r0-array"))]  # type: ignore[index]
    again = _talk(root, offer, steps, python, installed=True)
    assert again.store_sent == () and again.scripts_sent == () and again.sent_bytes == 0
    assert again.results[2]["arrays"][0]["stdout"].strip() == "4242;cluster"


def test_a_whole_submission_in_one_conversation(tmp_path: Path) -> None:
    _whole_conversation(tmp_path, "python3")


def test_the_helper_runs_on_python_3_6(tmp_path: Path) -> None:
    assert PY36.is_file(), "Python 3.6 (a login node's python3 on RHEL 8 / SLES 15) is missing: pyenv install 3.6.15"
    _whole_conversation(tmp_path, str(PY36))


def test_a_changed_installed_helper_is_not_run_but_replaced(tmp_path: Path) -> None:
    root = tmp_path / "braas-hpc-me"
    offer = Offer({}, {}, submit_exchange.scripts_dir(str(root)))
    _talk(root, offer, [])
    installed = Path(submit_exchange.scripts_dir(str(root))) / HELPER
    marker = tmp_path / "ran"
    installed.write_text(f"open({str(marker)!r}, 'w').close()\n")
    outcome = _talk(root, offer, [], installed=True)
    assert not marker.exists() and outcome.scripts_sent == (HELPER,)
    assert hashlib.sha256(installed.read_bytes()).hexdigest() == shipped_digests()[HELPER]


def test_no_python_on_the_login_node_is_said_so(tmp_path: Path) -> None:
    with pytest.raises(HelperUnavailable):
        _talk(tmp_path / "braas-hpc-me", Offer({}, {}), [], python=str(tmp_path / "no-such-python3"))


def test_a_file_changed_while_sent_stops_everything(tmp_path: Path) -> None:
    root = tmp_path / "braas-hpc-me"
    digest, scene = _file(tmp_path, "scene.blend", b"one version of the scene")
    scene.write_bytes(b"another one, same size!!")  # hashed, then changed before it went
    with pytest.raises(UsageError, match="changed on this computer"):
        _talk(root, Offer({digest: scene}, {digest: 24}), _steps(root, digest))
    assert not _store_path(root, digest).exists() and not (root / "jobs" / "j1" / "job.sh").exists()
    assert not list(root.rglob("*part"))


def test_a_store_file_this_computer_has_no_copy_of(tmp_path: Path) -> None:
    root = tmp_path / "braas-hpc-me"
    digest = hashlib.sha256(b"gone").hexdigest()
    with pytest.raises(MissingFromStore) as raised:
        _talk(root, Offer({digest: None}, {digest: 0}), _steps(root, digest))
    assert raised.value.digests == (digest,)
    assert not (root / "jobs" / "j1" / "job.sh").exists()


def test_a_cut_stream_runs_no_step_and_the_next_try_sends_only_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "braas-hpc-me"
    digest, scene = _file(tmp_path, "scene.blend", os.urandom(3 << 20))

    async def cut() -> None:
        transport = LocalTransport()
        handle = await transport.converse(submit_exchange.helper_argv(str(root), "python3", False))
        offer = Offer({digest: scene}, {digest: scene.stat().st_size})
        await handle.write(submit_exchange._request(str(root), [], offer, _steps(root, digest)))
        async for line in handle.lines:
            if '"need"' in line.text:
                await handle.write(scene.read_bytes()[: 1 << 20])  # a third of it, then the line drops
                await handle.write_eof()
            elif '"error"' in line.text:
                assert '"cut"' in line.text
        assert await handle.wait() == 1
        await handle.close()

    asyncio.run(cut())
    assert not _store_path(root, digest).exists() and not (root / "jobs" / "j1" / "job.sh").exists()
    (kept,) = root.rglob("*part")
    assert kept.stat().st_size == 1 << 20

    again = _talk(root, Offer({digest: scene}, {digest: scene.stat().st_size}), _steps(root, digest))
    assert again.store_sent == (digest,) and again.sent_bytes == again.store_bytes == (3 << 20) - (1 << 20)
    assert _store_path(root, digest).read_bytes() == scene.read_bytes() and not list(root.rglob("*part"))
    assert (root / "jobs" / "j1" / "job.sh").exists()


def test_a_kept_partial_file_with_other_bytes_is_not_stored(tmp_path: Path) -> None:
    """What an earlier try left is checked with the rest: a partial file that does not belong to these
    bytes makes the whole fail its SHA-256, nothing is stored, and the next try starts afresh."""
    root = tmp_path / "braas-hpc-me"
    digest, scene = _file(tmp_path, "scene.blend", os.urandom(1 << 20))
    partial = _store_path(root, digest).with_name(f".{digest}.braas-part")
    partial.parent.mkdir(parents=True)
    root.chmod(0o700)
    partial.write_bytes(b"x" * 1000)
    offer = Offer({digest: scene}, {digest: scene.stat().st_size})
    with pytest.raises(UsageError, match="changed"):
        _talk(root, offer, _steps(root, digest))
    assert not _store_path(root, digest).exists() and not partial.exists()
    assert _talk(root, offer, _steps(root, digest)).sent_bytes == 1 << 20
    assert _store_path(root, digest).read_bytes() == scene.read_bytes()


@pytest.mark.parametrize("bad", [
    {"write": [["/etc/braas-planted", "x"]]},
    {"write": [["{root}/../elsewhere", "x"]]},
    {"write": [["{root}/jobs/j1/../../../x", "x"]]},
    {"run": "rm -rf /"},
    {"nothing": 1},
])
def test_steps_outside_the_users_directory_are_refused(tmp_path: Path, bad: dict[str, object]) -> None:
    root = tmp_path / "braas-hpc-me"
    text = repr(bad).replace("{root}", str(root))
    step = eval(text)  # noqa: S307 - the test's own literal, with the root filled in
    with pytest.raises(BraasError, match="refused the request"):
        _talk(root, Offer({}, {}), [{"write": [[str(root / "jobs" / "j1" / "ok"), "fine"]]}, step])
    assert not Path("/etc/braas-planted").exists() and not (tmp_path / "elsewhere").exists()


def test_bad_digests_and_script_names_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "braas-hpc-me"
    with pytest.raises(BraasError, match="not a SHA-256"):
        _talk(root, Offer({"../../x": Path("/etc/passwd")}, {"../../x": 10}), [])


def test_a_directory_another_user_could_write_stops_it_before_anything(tmp_path: Path) -> None:
    root = tmp_path / "braas-hpc-me"
    (root / "jobs").mkdir(parents=True)
    root.chmod(0o700)
    (root / "jobs").chmod(0o777)
    digest, scene = _file(tmp_path, "scene.blend", b"scene")
    with pytest.raises(UntrustedTree, match="can be written by other users"):
        _talk(root, Offer({digest: scene}, {digest: 5}), _steps(root, digest))
    assert not (root / "store").exists()


def test_a_helper_that_cannot_write_answers_while_the_client_still_sends(tmp_path: Path) -> None:
    """The helper fails on the first file (its store directory cannot be made): it stops reading while
    8 MiB are still on their way; the client's writes fail, and the helper's answer is what the user sees."""
    root = tmp_path / "braas-hpc-me"
    digest, scene = _file(tmp_path, "scene.blend", os.urandom(8 << 20))
    (root / "store").mkdir(parents=True)
    root.chmod(0o700)
    (root / "store" / digest[:2]).write_text("in the way")
    offer = Offer({digest: scene}, {digest: scene.stat().st_size})
    with pytest.raises(BraasError, match="writing on the cluster failed"):
        asyncio.run(asyncio.wait_for(converse(LocalTransport(), str(root), [], offer, _steps(root, digest)), 60))
    assert not (root / "jobs" / "j1" / "job.sh").exists()


class _Counting(LocalTransport):
    def __init__(self) -> None:
        super().__init__()
        self.streams = 0
        self.runs: list[bool] = []  # each run: whether it had input

    async def _exec(self, command: str, stdin: bytes | None, timeout: float | None) -> tuple[int | None, bytes, bytes]:
        self.runs.append(stdin is not None)
        return await super()._exec(command, stdin, timeout)

    async def _open_stream(self, command: str, stdin: bool = False) -> Any:
        self.streams += 1
        return await super()._open_stream(command, stdin)


def test_a_request_offering_no_store_file_goes_as_one_command_and_a_lacking_script_is_still_sent(
        tmp_path: Path) -> None:
    """A new round (its files travel in the request): one command with the request as its input, which
    the SSH back ends send through their kept shell. A script found damaged stops the helper before any
    step; the conversation then sends it and the steps run once."""
    root = tmp_path / "braas-hpc-me"
    offer = Offer({}, {}, submit_exchange.scripts_dir(str(root)))
    _talk(root, offer, [])  # the scripts installed, as by the job's first submission
    counter = tmp_path / "count"
    step = [{"run": ["sh", "-c", 'echo x >> "$1"', "sh", str(counter)], "ok": [0]}]

    quiet = _Counting()
    outcome = asyncio.run(converse(quiet, str(root), [], offer, step, installed=True))
    assert outcome.stopped is None and outcome.scripts_sent == ()
    assert (quiet.streams, quiet.runs) == (0, [True])
    assert counter.read_text() == "x\n"

    damaged = Path(submit_exchange.scripts_dir(str(root))) / "render_task.py"
    damaged.write_text("# someone's edit\n")
    repairing = _Counting()
    outcome = asyncio.run(converse(repairing, str(root), [], offer, step, installed=True))
    assert outcome.scripts_sent == ("render_task.py",) and repairing.streams == 1
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == shipped_digests()["render_task.py"]
    assert counter.read_text() == "x\nx\n"  # the first try ran no step
