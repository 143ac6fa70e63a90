"""Hostile input: every user-controlled value is refused with an error naming it, or reaches job scripts and
remote commands only safely quoted; no local path is built outside the destination from a remote name.

Values are built from fragments a shell or a directive parser would read as syntax (quotes, `$()`,
backticks, `;`, newlines, NUL, `..`), non-ASCII text and a 10,000-character string. A canary file
proves that nothing run by these tests executed an injected command.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from braas_hpc.core import registry, transfer
from braas_hpc.core.context import JobContext
from braas_hpc.core.errors import PresetError, TransferError, UsageError
from braas_hpc.core.frames import MAX_FRAME_NUMBER, MAX_FRAMES, format_frames, parse_frames
from braas_hpc.core.jobs import FRAME_FILE, JobPaths, JobSpec, make_job_name, store_path
from braas_hpc.core.presets import Preset, load_preset
from braas_hpc.core.schedulers.base import render_job_script
from braas_hpc.core.service import dry_run
from braas_hpc.core.spec import SubmitRequest
from braas_hpc.core.store import check_relative
from braas_hpc.core.transport import quote_command
from braas_hpc.core.transport.base import CommandResult, RemoteEntry
from braas_hpc.core.transport.local import LocalTransport
from braas_hpc.core.tree import remote_root
from tests.helpers import REPO

CANARY = Path(tempfile.gettempdir()) / f"braas-hostile-canary-{os.getpid()}"
FRAGMENTS = [
    f"$(touch {CANARY})", f"`touch {CANARY}`", f"; touch {CANARY}", f"' ; touch {CANARY} ; '",
    f'" ; touch {CANARY} ; "', f"\ntouch {CANARY}\n", "\r", "\0", "..", "../", "/", "'", '"', "\\", " ", "\t",
    "#", "%", "%j", "*", "&", "|", "=", ",", ":", "-", "--", "é", "日本語", "🎬", "\u2028", "\x85", "\x0b",
]
LONG = "x" * 10_000
hostile = st.lists(st.one_of(st.sampled_from([*FRAGMENTS, LONG]), st.text(max_size=6)), max_size=5).map("".join)
# Short enough for one file name component (255 bytes), never '/' or NUL; its canary is a relative "canary".
component = st.lists(st.one_of(st.sampled_from([*FRAGMENTS, "$(touch canary)", "`touch canary`", ";touch canary;",
                                                 "'$(touch canary)'", '"$(touch canary)"']),
                               st.text(max_size=6)), max_size=4).map(
    lambda parts: "d" + "".join(parts).replace("/", "_").replace("\0", "_")[:50])
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JOB_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}-[0-9]{8}-[0-9]{6}-[0-9a-f]{4}")
DIRECTIVE = {"slurm": re.compile(r"#SBATCH --[a-z-]+(=[^\s'\"\\]+)?"),
             "pbs": re.compile(r"#PBS -[A-Za-z]( [^\s'\"\\]+)?")}


def no_canary() -> None:
    """Fails when the canary exists, and removes it, so that one injection fails only the check that saw it."""
    ran = CANARY.exists()
    CANARY.unlink(missing_ok=True)
    assert not ran, f"an injected command ran: {CANARY} existed"


# ---- frame specs ---------------------------------------------------------------------------------------

frame_like = st.lists(st.sampled_from([*"0123456789", "-", ",", ":", " ", "\n", "١", "𝟙", "0" * 5000]),
                      max_size=12).map("".join)


@SETTINGS
@given(st.one_of(hostile, frame_like))
@example("0" * 5000)  # Python refuses int() of more than 4300 digits: once a ValueError, not a UsageError
@example("1-" + "9" * 10_000)
@example("1-5:" + "0" * 5000 + "1")
@example("١٢")  # Arabic-Indic digits were taken as frame 12
@example("5\n")
def test_frame_spec_is_frames_or_a_clear_error(spec: str) -> None:
    try:
        frames = parse_frames(spec)
    except UsageError as exc:
        assert "frame spec" in str(exc) and len(str(exc)) < 2000  # names the field; a 10k spec is not echoed whole
        return
    assert set(spec) <= set("0123456789,-: \t\n\r\x0b\x0c")
    assert frames == sorted(set(frames)) and 0 < len(frames) <= MAX_FRAMES
    assert all(0 <= f <= MAX_FRAME_NUMBER for f in frames)
    assert parse_frames(format_frames(frames)) == frames


# ---- job and project names ------------------------------------------------------------------------------

@SETTINGS
@given(hostile, hostile)
def test_job_names_are_one_safe_path_segment(scene_stem: str, project: str) -> None:
    name = make_job_name(Path(f"{scene_stem}.blend"), project)
    assert JOB_NAME.fullmatch(name), name
    paths = JobPaths("/w/braas-hpc", name)
    assert paths.job_dir == f"/w/braas-hpc/jobs/{name}" and posixpath.normpath(paths.job_dir) == paths.job_dir


# ---- user presets and the job scripts they produce ----------------------------------------------------------

BASE: dict[str, object] = {
    "name": "hx", "title": "Hostile", "scheduler": "slurm", "host": "login.example.org", "user": "me",
    "workdir": "/scratch/me", "account": "ACC-1", "partition_cpu": "qcpu", "partition_gpu": "qgpu",
    "blender": "blender", "env": ["module load Blender"],
    "partitions": {"qcpu": {"kind": "cpu"}, "qgpu": {"kind": "gpu", "cycles_device": "CUDA", "gpus_per_task": 1}},
}


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, str)
    escaped = "".join(c if c.isprintable() and c not in '"\\' else
                      (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}") for c in value)
    return f'"{escaped}"'


def toml_text(data: dict[str, object]) -> str:
    lines = [f"{key} = {toml_value(value)}" for key, value in data.items() if not isinstance(value, dict)]
    for key, tables in data.items():
        if isinstance(tables, dict):
            for name, table in tables.items():
                lines.append(f"[{key}.{toml_value(name)}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private config and data directory with a user presets folder, and a scene file to submit."""
    root = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRAAS_HPC_CONFIG_DIR", str(root / "config"))
        mp.setenv("BRAAS_HPC_DATA_DIR", str(root / "data"))
        (root / "config" / "presets").mkdir(parents=True)
        shutil.copy(REPO / "examples" / "sample" / "sample.blend", root / "scene.blend")  # its settings are read
        yield root
    no_canary()


def write_preset(site: Path, data: dict[str, object]) -> None:
    (site / "config" / "presets" / "hx.toml").write_text(toml_text(data), encoding="utf-8")


def check_script(script: str, preset: Preset, job_dir: str, header_lines: int) -> None:
    """Directives stay on their lines and hold no quote, space or backslash; the body's user values are quoted."""
    lines = script.split("\n")
    assert lines[0] == "#!/bin/bash"
    header = lines[1:lines.index("")]
    extras = {f"{h} {e}" for e in preset.extra_directives for h in ("#SBATCH", "#PBS")}
    for line in header:
        assert line in extras or DIRECTIVE[preset.scheduler].fullmatch(line), line
    # env lines are the site's own shell code (module loads), by design not quoted: left out of the run.
    own = "\n".join(line for line in lines if line not in preset.env)
    # Run first, then look for the canary, before any text check: `bash -n` runs nothing, and a text check
    # that fails first would hide that an injected command ran.
    argv = run_harmlessly(own)
    no_canary()
    assert argv is not None, "the script never reached Blender's exec"
    assert argv[0] == preset.blender and job_dir in argv, argv
    assert len(lines) == len(header) + len(preset.env) + header_lines
    assert f"cd {shlex.quote(job_dir)} || exit 2" in lines
    command = shlex.split(next(line for line in lines if line.startswith("exec ") and " -b " in line))
    assert command[1] == preset.blender and job_dir in command
    done = subprocess.run(["bash", "-n"], input=own, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def run_harmlessly(script: str) -> list[str] | None:
    """Run the script's lines in a real bash where `cd` and `exec` only record their words and the only
    program on PATH is `touch` (what the injected fragments call, to create the canary). Returns the words
    of the last `exec` (Blender's command line), None when no `exec` ran."""
    with tempfile.TemporaryDirectory() as temp:
        bin_dir, record = Path(temp) / "bin", Path(temp) / "argv"
        bin_dir.mkdir()
        (bin_dir / "touch").symlink_to(next(Path(d) / "touch" for d in ("/usr/bin", "/bin")
                                            if (Path(d) / "touch").exists()))
        # The job's own checks (its tree is the user's, the render task's hash) pass: nothing here exists.
        stubs = ('cd() { :; }\nexec() { [ "$#" -gt 0 ] || return 0; printf "%s\\0" "$@" >"$BRAAS_ARGV"; exit 0; }\n'
                 'sha256sum() { return 0; }\n[() { case "$1" in -L|!) return 1;; esac; builtin [ "$@"; }\n')
        # From a file, as sbatch runs it: a script with long values is more than one argument may hold.
        (Path(temp) / "job.sh").write_text(stubs + script)
        subprocess.run(["/bin/bash", str(Path(temp) / "job.sh")], capture_output=True, timeout=30, cwd=temp,
                       env={"PATH": str(bin_dir), "BRAAS_ARGV": str(record), "BRAAS_TASK_ID": "1"})
        if not record.exists():
            return None
        return record.read_bytes().decode("utf-8", "surrogateescape").split("\0")[:-1]


def test_the_script_check_catches_an_injected_command(site: Path) -> None:
    """The check above must be able to fail: an unquoted `$(...)` that bash -n accepts, and whose words
    vanish from Blender's command line, is caught by running the script."""
    write_preset(site, BASE)
    script, preset = plan(site)
    tampered = "\n".join(f"{line} $(touch {CANARY})" if line.startswith("exec ") and " -b " in line else line
                         for line in script.split("\n"))
    assert tampered != script
    with pytest.raises(AssertionError, match="an injected command ran"):
        check_script(tampered, preset, job_dir_of(script, preset), body_lines(site))
    assert not CANARY.exists()  # the check removed it


def job_dir_of(script: str, preset: Preset) -> str:
    root = remote_root(preset, placeholder=True)
    base = f"{root}/jobs/"
    return str(re.findall(re.escape(base) + r"[A-Za-z0-9_-]+", script)[0])


def plan(site: Path, **request: object) -> tuple[str, Preset]:
    fields: dict[str, object] = {"frames": "1-4", "chunk": 2, **request}
    result = dry_run(SubmitRequest(scene=site / "scene.blend", preset="hx", **fields))  # type: ignore[arg-type]
    return result.script, load_preset("hx")


_BODY: dict[Path, int] = {}


def body_lines(site: Path) -> int:
    """Lines of a clean script other than its directives and env lines (the same for every clean preset)."""
    if site not in _BODY:
        write_preset(site, BASE)
        script, preset = plan(site)
        lines = script.split("\n")
        _BODY[site] = len(lines) - (lines.index("") - 1) - len(preset.env)
    return _BODY[site]


@SETTINGS
@given(field=st.sampled_from(["account", "partition", "email", "project"]), value=hostile,
       scheduler=st.sampled_from(["slurm", "pbs"]))
@example(field="email", value="me@example.org\n", scheduler="slurm")  # `$` matched before the newline
@example(field="account", value="ACC\n", scheduler="pbs")
def test_submit_fields_are_refused_or_quoted(site: Path, field: str, value: str, scheduler: str) -> None:
    expected_lines = body_lines(site)
    write_preset(site, {**BASE, "scheduler": scheduler})
    try:
        script, preset = plan(site, **{field: value})
    except UsageError as exc:
        assert field != "project", exc  # any project name is turned into a safe job name
        assert {"email": "e-mail"}.get(field, field) in str(exc) and len(str(exc)) < 400, exc
        return
    check_script(script, preset, job_dir_of(script, preset), expected_lines)
    assert "\n" not in value or field == "project", "a newline from the user reached the script"


PRESET_KEYS = ["workdir", "account", "partition_cpu", "qcpu.partition", "qcpu.qos", "qcpu.(name)", "blender",
               "title", "env", "extra_directives", "name", "host", "user"]


def mutate(key: str, value: str) -> dict[str, object]:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    partitions = {k: dict(v) for k, v in BASE["partitions"].items()}  # type: ignore[attr-defined]
    if key == "qcpu.(name)":
        partitions[value] = partitions.pop("qcpu")
        data["partition_cpu"] = value
    elif key.startswith("qcpu."):
        partitions["qcpu"][key.split(".")[1]] = value
    elif key in ("env", "extra_directives"):
        data[key] = [value]
    else:
        data[key] = value
    data["partitions"] = partitions
    return data


@SETTINGS
@given(key=st.sampled_from(PRESET_KEYS), value=hostile, scheduler=st.sampled_from(["slurm", "pbs"]))
@example(key="workdir", value="/scratch/me\ntouch /tmp/x", scheduler="slurm")  # was a command in the script
@example(key="qcpu.partition", value="qcpu\n#SBATCH --uid=0", scheduler="slurm")  # was a second directive
@example(key="workdir", value="/scratch/my dir", scheduler="slurm")  # sbatch refused the script, late
@example(key="blender", value="blender\0", scheduler="pbs")
@example(key="blender", value=f"/opt/my blender/$(touch {CANARY})/'x'/blender", scheduler="slurm")  # quoted
@example(key="workdir", value="/scratch/ünï/c+d@e", scheduler="pbs")  # accepted: letters of any script
def test_preset_values_are_refused_or_quoted(site: Path, key: str, value: str, scheduler: str) -> None:
    expected_lines = body_lines(site)
    write_preset(site, {**mutate(key, value), "scheduler": scheduler})
    try:
        script, preset = plan(site)
    except PresetError as exc:
        named = {"qcpu.(name)": "partition", "qcpu.partition": "partition", "qcpu.qos": "qos",
                 "extra_directives": "directives", "env": "env",
                 "partition_cpu": "partition"}.get(key, key)
        assert named in str(exc), exc
        return
    except UsageError as exc:  # a partition the preset accepted but the job cannot use (e.g. it has no GPUs)
        assert "partition" in str(exc) and key in ("partition_cpu", "qcpu.(name)"), exc
        return
    check_script(script, preset, job_dir_of(script, preset), expected_lines)
    if key in ("workdir", "account", "qcpu.partition", "qcpu.qos", "qcpu.(name)", "partition_cpu"):
        assert re.fullmatch(r"[\w/.+@-]*", value), f"{key} {value!r} was accepted"


@settings(max_examples=25, deadline=None)
@given(root=component, bin_dir=component, scene_name=hostile.filter(lambda n: "\0" not in n))
def test_job_script_runs_hostile_paths_as_plain_words(root: str, bin_dir: str, scene_name: str) -> None:
    """The real bash runs the job script with a hostile working directory, Blender path and scene name (read
    from the .blend): Blender gets exactly the words it should, and nothing injected runs."""
    with tempfile.TemporaryDirectory() as temp:
        base = Path(temp)
        paths = JobPaths(str(base / root / "braas-hpc"), "job-20260101-000000-abcd")
        Path(paths.job_dir).mkdir(parents=True)
        blender = base / bin_dir / "blender"
        blender.parent.mkdir(exist_ok=True)
        argv_file = base / "argv"
        blender.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > {shlex.quote(str(argv_file))}\n")
        blender.chmod(0o755)
        spec = JobSpec(name=paths.name, preset="local", scene="/s.blend", frames=(1,), tasks=((1,),),
                       scene_name=scene_name)
        preset = Preset(name="local", scheduler="local")
        task = paths.render_task("1.0")
        script = render_job_script([], spec, preset, paths, [str(blender)], task, log_to_file=False)
        env = {"PATH": "/usr/bin:/bin", "BRAAS_TASK_ID": "1"}
        done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30, cwd=base)
        # The canaries first: `component` turns the absolute canary into a relative name (its '/' become '_'),
        # which lands in the job directory the script cd's to.
        assert not [p for p in base.rglob("*canary*") if p.is_file()], "an injected command ran"
        no_canary()
        assert done.returncode == 0, done.stderr
        argv = argv_file.read_bytes().decode().split("\0")[:-1]
    assert argv == ["-b", "-Y", paths.scene, "-E", "CYCLES", "-t", "0", "-P", task, "--", "--job-dir", paths.job_dir,
                    "--task", "1", "--device", "CPU", "--format", "PNG", "--frames-file", "frames.txt",
                    *([f"--scene={scene_name}"] if scene_name else [])]


# ---- remote commands: one quoting function ----------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.lists(hostile, min_size=1, max_size=4))
@example(["a\0; touch x"])  # sshd passes the line on as a C string: cut at the NUL, inside the quotes
def test_quote_command_round_trips_through_a_real_shell(words: list[str]) -> None:
    if any("\0" in w for w in words):
        with pytest.raises(ValueError, match="NUL"):
            quote_command(["printf", "%s\\0", *words])
        return
    line = quote_command(["printf", "%s\\0", *words])
    with tempfile.TemporaryDirectory() as temp:  # a broken quoting may write files (`>x`): not in the repo
        done = subprocess.run(["sh", "-c", line], capture_output=True, timeout=30, cwd=temp)
    no_canary()
    assert shlex.split(line) == ["printf", "%s\\0", *words]
    assert done.returncode == 0 and done.stdout.decode().split("\0")[:-1] == words


# ---- remote names and local paths ---------------------------------------------------------------------

frame_names = st.builds(lambda pre, n, post: f"{pre}frame_{n:06d}.png{post}", st.sampled_from(["", *FRAGMENTS]),
                        st.integers(0, 1_048_574), st.sampled_from(["", *FRAGMENTS]))


@SETTINGS
@given(st.one_of(hostile, frame_names))
@example("frame_000001.png\n")  # `$` let a newline through
@example("/etc/frame_000001.png")
@example("../frame_000001.png")
def test_safe_target_stays_in_the_destination(tmp_path: Path, name: str) -> None:
    target = transfer._safe_target(tmp_path, name)
    if target is not None:
        assert target.parent == tmp_path.resolve() and target.name == name and FRAME_FILE.match(name)
        assert not target.is_symlink()


def test_safe_target_never_follows_links(tmp_path: Path) -> None:
    dest, outside = tmp_path / "dest", tmp_path / "outside.txt"
    dest.mkdir()
    outside.write_text("precious")
    (dest / "frame_000001.png").symlink_to(outside)
    (dest / "frame_000002.png").symlink_to(dest / "frame_000003.png")
    (dest / "frame_000004.png").symlink_to(tmp_path / "missing")
    for n in (1, 2, 4):
        assert transfer._safe_target(dest, f"frame_{n:06d}.png") is None
    linked = tmp_path / "linked-dest"
    linked.symlink_to(dest)
    assert transfer._safe_target(linked, "frame_000005.png") == dest.resolve() / "frame_000005.png"


@SETTINGS
@given(hostile)
@example("../../etc/passwd")
@example("a/\0/b")
def test_input_names_stay_inside_in(name: str) -> None:
    try:
        checked = check_relative(name)
    except UsageError as exc:
        assert "unsafe path" in str(exc)
        return
    assert posixpath.normpath(posixpath.join("/in", checked)).startswith("/in/")
    assert not any(c in checked for c in "\t\n\r\0")


@SETTINGS
@given(hostile)
@example("0" * 64 + "\n")
def test_store_paths_take_only_digests(digest: str) -> None:
    try:
        path = store_path("/w/braas-hpc", digest)
    except ValueError:
        return
    assert re.fullmatch(r"/w/braas-hpc/store/[0-9a-f]{2}/[0-9a-f]{64}", path)


class ListingTransport(LocalTransport):
    """The local transport, with extra names in every listing: what a hostile SFTP server may send, or a
    hostile cluster may print for the download's listing command (as regular files of 5 bytes)."""

    def __init__(self, extra: list[str]) -> None:
        super().__init__()
        self.extra = extra

    async def listdir(self, remote: str) -> list[RemoteEntry]:
        return [*await super().listdir(remote), *(RemoteEntry(n, 5) for n in self.extra)]

    async def run(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        done = await super().run(argv, **kwargs)
        if list(argv[:3]) != ["sh", "-c", transfer._LISTING_SCRIPT]:
            return done
        records = "".join(f"L\tf\t5\t{n}\0" for n in self.extra)
        return dataclasses.replace(done, stdout=done.stdout + records)


HOSTILE_NAMES = ["../frame_000009.png", "/etc/frame_000009.png", "frame_000009.png\n", "frame_000009.png/..", "..",
                 ".", "", "frame_000009.png\0", "a\\..\\..\\b", "..\\frame_000009.png", f"$(touch {CANARY})",
                 "frame_00000١.png", "x" * 10_000]


def test_download_writes_only_frames_inside_the_destination(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAAS_HPC_DATA_DIR", str(tmp_path / "data"))
    # The frames' remote paths reach a real shell (sha256sum through the local transport's /bin/sh): a cluster
    # directory with shell syntax in its name shows that they are quoted there.
    paths = JobPaths(str(tmp_path / f"cluster $(touch {CANARY}) `touch {CANARY}`" / "braas-hpc"),
                     "job-20260101-000000-abcd")
    out = Path(paths.out_dir)
    out.mkdir(parents=True)
    for n in (1, 2, 3):
        (out / f"frame_{n:06d}.png").write_bytes(f"frame {n}".encode())
    spec = JobSpec(name=paths.name, preset="local", scene="/s.blend", frames=(1, 2, 3), tasks=((1, 2, 3),))
    registry.add_job(spec, paths.root, {}, "COMPLETED")
    dest, outside = tmp_path / "here" / "dest", tmp_path / "here" / "precious.txt"
    dest.mkdir(parents=True)
    outside.write_text("precious")
    (dest / "frame_000003.png").symlink_to(outside)  # a planted link under a frame's name
    (dest / ".frame_000002.png.braas-part").symlink_to(outside)  # ... and under a download's temp name
    # The job as a verb receives it, reached through a transport that lists the hostile names.
    job = JobContext(registry.get_job(paths.name), load_preset("local"), None, ListingTransport(HOSTILE_NAMES))
    try:
        result = asyncio.run(transfer.download_once(job, dest))
    finally:  # an injection may also make the command fail: the canary is the finding to report
        no_canary()
    assert outside.read_text() == "precious"
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["dest", "precious.txt"]
    assert sorted(p.name for p in dest.iterdir()) == ["frame_000001.png", "frame_000002.png", "frame_000003.png"]
    assert (dest / "frame_000002.png").read_bytes() == b"frame 2" and (dest / "frame_000003.png").is_symlink()
    assert result.downloaded == 2
    # A listing record cannot carry an empty name, and a NUL ends one: the part before it ("frame_000009.png",
    # which the cluster never hashed) is not fetched, as the destination above shows.
    printable = {n for n in HOSTILE_NAMES if n and "\0" not in n}
    assert set(result.ignored) == {n for n in printable if not n.startswith(".")} | {"frame_000003.png"}


@pytest.mark.parametrize("name", ["../x", "/etc/x", "x/..", "..", ".", "", "x\0", "a/b", "sub/../../x"])
def test_get_tree_refuses_names_that_leave_the_folder(tmp_path: Path, name: str) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    remote.mkdir()
    local.mkdir()
    with pytest.raises(TransferError, match="refusing remote name"):
        asyncio.run(ListingTransport([name]).get_tree(str(remote), local))
    assert list(local.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["local", "remote"]


def test_get_tree_does_not_write_through_local_links(tmp_path: Path) -> None:
    remote, local, elsewhere = tmp_path / "remote", tmp_path / "local", tmp_path / "elsewhere"
    for d in (remote, local, elsewhere):
        d.mkdir()
    (remote / "sub").mkdir()
    (remote / "sub" / "f").write_text("remote")
    (local / "sub").symlink_to(elsewhere)
    with pytest.raises(TransferError, match="refusing remote name 'sub'"):
        asyncio.run(LocalTransport().get_tree(str(remote), local))
    assert list(elsewhere.iterdir()) == []


def test_spec_fields_are_named_in_errors() -> None:
    spec = JobSpec(name="j", preset="p", scene="/s.blend", frames=(1,), tasks=((1,),))
    for field, value, named in (("account", "a;b", "account"), ("partition", "q\n", "partition"),
                                ("qos", "$(x)", "QoS"), ("email", "a@b.org\n", "e-mail")):
        with pytest.raises(UsageError, match=named):
            dataclasses.replace(spec, **{field: value}).validate()
