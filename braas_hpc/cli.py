"""`braas-hpc`: the same verbs as the Blender panel. Exit codes (core.errors): 0 success, 1 the job or
command failed, 2 bad input, 3 a cluster could not be reached (`status`: some did not answer; the others'
jobs are listed), 124 `wait --timeout` ran out, 130 interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.console import Group as RichGroup
from rich.filesize import decimal
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from . import cli_costs, cli_dashboard, cli_group, cli_json, cli_logging, cli_progress
from .core import VERSION, costs, group, job_end, logs, monitor, readiness, recovery, registry, service, transfer, watch
from .core.context import job_context
from .core.display import plain
from .core.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TIMED_OUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    BraasError,
    HostKeyUnknown,
    UsageError,
    WaitTimedOut,
    connection_failure_kind,
)
from .core.jobs import IMAGE_FORMATS, VIDEO_CODECS
from .core.presets import SSH_BACKENDS, all_presets, load_preset, unconfirmed_summary
from .core.probe import probe
from .core.schedulers import scheduler_for
from .core.schedulers.base import TERMINAL
from .core.split import MIN_PARTS
from .core.store import HashCache
from .core.transport import pool
from .core.transport.hostkeys import trust_host_key
from .core.transport.keeper import link as keeper_link
from .core.transport.keeper.sockets import KeeperNotRunning, KeeperUnavailable
from .core.user_presets import catalogue, is_builtin, save_user_preset, user_preset_path
from .prompts import TerminalPrompts, can_ask

# No markup: messages quote file names, remote errors and logs, which may hold `[/bold]` (a crash) or escapes.
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)
out = Console()  # the live table of `status --watch`


def _print_json(data: dict[str, object]) -> None:
    """The one JSON document of a `--json` command: an object whose `schema` says which version of the
    documented contract (docs/json.md) it follows."""
    print(cli_json.document(data))


def _request(args: argparse.Namespace, preset: str) -> service.SubmitRequest:
    return service.SubmitRequest(
        scene=Path(args.scene), preset=preset, frames=args.frames or "", chunk=args.chunk,
        device="GPU" if getattr(args, "gpu", False) else "CPU",
        walltime_min=getattr(args, "walltime", None), max_parallel=getattr(args, "max_parallel", 0),
        ssh_backend=getattr(args, "ssh_backend", None), account=getattr(args, "account", None) or "",
        partition=getattr(args, "partition", None) or "", email=getattr(args, "email", None) or "",
        memory_gb=getattr(args, "memory", None) or 0, pack=getattr(args, "pack", None) or "packed",
        allow_scripts=getattr(args, "allow_scripts", False), project=getattr(args, "name", None) or "",
        retries=getattr(args, "retries", None) if getattr(args, "retries", None) is not None else 2,
        gpu_backend=getattr(args, "gpu_backend", None) or "",
        image_format=args.format or "", samples=_positive(args.samples, "--samples"),
        resolution_percentage=_positive(args.resolution_percentage, "--resolution-percentage"),
        video=getattr(args, "video", None) or "", fps=_rate(getattr(args, "fps", None)),
        split_samples=_split_count(args.split_samples),
    )


def _split_count(value: int | None) -> int:
    if value is not None and value < MIN_PARTS:
        raise UsageError(f"--split-samples needs at least {MIN_PARTS} parts, got {value}")
    return value or 0


def _positive(value: int | None, flag: str) -> int:
    """A flag's number, 0 when not given (the scene's value); 0 or less given by hand is refused."""
    if value is not None and value < 1:
        raise UsageError(f"{flag} must be at least 1, got {value} (leave it out for the scene's own)")
    return value or 0


def _rate(fps: float | None) -> float:
    """--fps, 0 when not given (the scene's rate); refused when out of range."""
    if fps is not None and not 0 < fps <= 1000:
        raise UsageError(f"--fps must be above 0 and at most 1000, got {fps:g} (leave it out for the scene's own)")
    return fps or 0.0


async def cmd_render(args: argparse.Namespace) -> int:
    request = _request(args, "local")
    built = service.build_spec(request)
    if args.out:
        transfer.check_dest(Path(args.out))  # before rendering, not after
    columns = (TextColumn("[bold]rendering"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.description}", markup=False), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False, disable=args.json) as bar:
        task = bar.add_task("packing the scene", total=None)

        def on_progress(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, total=total, description=message)

        result = await watch.render_local(request, built, on_progress)
    frames_dir = Path(result.job_dir) / "out"
    if args.out:
        try:
            got = await transfer.download(job_context(result.job), Path(args.out))
        except UsageError as exc:
            raise UsageError(f"{exc}; the frames are in {frames_dir}") from None
        frames_dir = got.dest.resolve()
    if args.json:
        _print_json({**result.to_json(), "frames_dir": str(frames_dir)})
    else:
        for note in result.upload.notes:
            print(f"note: {note}")
        print(f"rendered {result.frames} ({result.tasks} task(s)) as job {result.job}")
        print(f"frames are in {frames_dir}")
    return 0


async def cmd_submit(args: argparse.Namespace) -> int:
    if args.dry_run and len(several := cli_group.presets_of(args.preset)) > 1:
        raise UsageError("--dry-run shows one cluster's job script and submission: run it with each preset of the "
                         f"group ({', '.join(several)})")
    if args.dry_run:
        plan = service.dry_run(_request(args, args.preset))
        if args.json:
            _print_json({"script": plan.script, "submit": plan.submit_command, "frames_file": plan.frames_file,
                         "job_dir": plan.job_dir, "finish_script": plan.finish_script, "finish": plan.finish_command,
                         "placeholders": plan.placeholders})
        else:
            for mark, what in plan.placeholders.items():
                print(f"# placeholder {mark}: {what}")
            print(f"# would be uploaded to {plan.job_dir}/job.sh and submitted with:\n#   {plan.submit_command}")
            print(plan.script)
            print(f"# frames.txt (one line per array task):\n{plan.frames_file}", end="")
            print(f"# then the finish step (summary.json, thumb.jpg), submitted with:\n#   {plan.finish_command}")
            print(plan.finish_script, end="")
        return 0
    if len(cli_group.presets_of(args.preset)) > 1:  # one animation over several clusters
        if args.estimate:
            raise UsageError("--estimate is for one cluster: ask it of each preset (submit SCENE --preset NAME "
                             "--estimate); a job over several clusters then sizes its first batches from those")
        return await cli_group.submit(args, _request(args, args.preset), err, _print_json)
    if args.estimate:
        return await cli_costs.submit_estimate(args, _request(args, args.preset), _print_json)
    request = _request(args, args.preset)
    built, expected = await cli_costs.before_submit(request)
    with cli_progress.shown(err, args.json):
        result = await service.submit(request, built, expected.estimate.to_json() if expected.estimate else None)
    for warning in (*result.warnings, *expected.warnings):
        err.print(f"warning: {plain(warning)}")
    if args.json:
        data = result.to_json()
        _print_json({**data, "warnings": [*data["warnings"], *expected.warnings], "costs": expected.to_json()})
    else:
        up = result.upload
        print(f"submitted {result.frames} on {result.preset} as {result.tasks} array task(s), "
              f"scheduler id {', '.join(result.scheduler_ids)}")
        print(f"inputs: sent {up.uploaded_files} file(s), {decimal(up.uploaded_bytes)}; "
              f"{up.skipped_files} already on the cluster")
        if up.outside_project:
            print(f"note: {len(up.outside_project)} file(s) from outside the scene's folder were included under "
                  f"_outside_project/: {', '.join(up.outside_project[:5])}")
        for note in up.notes:
            print(f"note: {note}")
        print(result.job)
    return 0


async def cmd_allocation(args: argparse.Namespace) -> int:
    return await cli_costs.cmd_allocation(args, _print_json)


async def cmd_gc(args: argparse.Namespace) -> int:
    result = await service.gc(args.preset, remove=args.yes)
    if args.json:
        _print_json(result.to_json())
        return 0
    for f in (*result.files, *result.abandoned):
        print(f"{decimal(f.size):>10}  {f.digest}")
    verb = "removed" if result.removed else "would remove (run again with --yes)"
    print(f"{verb}: {len(result.files)} unreferenced file(s), {decimal(result.total_bytes)} in {result.store_dir}")
    if result.abandoned:
        print(f"{verb}: {len(result.abandoned)} temp file(s) of uploads that failed a day or more ago, "
              f"{decimal(result.abandoned_bytes)}")
    return 0


def _status_line(s: monitor.JobStatus) -> str:
    return f"{s.job}  {s.preset}  {s.state}  frames {s.frames_done}/{s.frames_total}"


PARTIAL = EXIT_UNREACHABLE  # `status`: some clusters did not answer; the others' jobs are shown


def _error_lines(report: monitor.StatusReport) -> list[str]:
    """One line per cluster that did not answer (its jobs, what failed), or per job whose preset is gone."""
    lines = []
    for e in report.errors:
        if e.kind == "preset_missing":
            lines.append(f"{', '.join(e.jobs)}: {e.error}")
        else:
            lines.append(f"{e.preset} did not answer ({e.kind}) for {', '.join(e.jobs)}: {e.error}")
    return [plain(line) for line in lines]


def _report_lines(report: monitor.StatusReport) -> list[str]:
    lines = [plain(_status_line(s)) for s in report.statuses] + _error_lines(report)
    return lines or ["no jobs yet"]


def _live_lines(report: monitor.StatusReport) -> list[str]:
    """Each running job's tasks within their frames, and where its newest preview is on this computer."""
    lines = []
    for s in report.statuses:
        if s.progress:
            lines.append(plain(f"{s.job}  " + ", ".join(t.text() for t in s.progress)))
        if s.preview and s.state not in TERMINAL:
            lines.append(plain(f"{s.job}  preview {s.preview}"))
    return lines


def _status_table(report: monitor.StatusReport) -> Table:
    table = Table("job", "cluster", "state", "frames", "tasks", "within frames", box=None, header_style="bold")
    for s in report.statuses:
        tasks = ", ".join(f"{n} {state.lower()}" for state, n in sorted(s.tasks.items()))
        within = ", ".join(t.text() for t in s.progress)
        table.add_row(*(Text(plain(cell)) for cell in (s.job, s.preset, s.state, f"{s.frames_done}/{s.frames_total}",
                                                       tasks, within)))
    for e in report.errors:
        for job in e.jobs:
            first = str(e.error).strip().splitlines()[0] if str(e.error).strip() else e.kind
            table.add_row(*(Text(plain(cell)) for cell in (job, e.preset, "NOT ANSWERED", "", f"{e.kind}: {first}",
                                                           "")))
    previews = [f"{s.job}: {s.preview}" for s in report.statuses if s.preview and s.state not in TERMINAL]
    if previews:  # the terminal shows no picture: where it is
        table.caption = plain("preview " + "; ".join(previews))
    return table


def _ask_about_host_keys(report: monitor.StatusReport) -> None:
    """An unknown host key is a question for the user when one can answer (main asks, then runs again)."""
    for e in report.errors:
        if isinstance(e.error, HostKeyUnknown) and can_ask(pool.prompts):
            raise e.error


def _job_end(args: argparse.Namespace, counts: Callable[[str], bool] = lambda _job: True) -> job_end.JobEnd:
    """--on-done and --auto-download of `wait` and `status --watch` (core.job_end)."""
    folder = Path(args.download_dir) if args.download_dir else Path.cwd()
    if args.download_dir and not args.auto_download:
        raise UsageError("--download-dir goes with --auto-download")
    if args.auto_download:
        transfer.check_dest(folder)
    return job_end.JobEnd(job_end.hook_argv(args.on_done) if args.on_done is not None else None,
                          (lambda job: folder / job) if args.auto_download else None, counts,
                          lambda line: err.print(plain(line), highlight=False))


async def cmd_status(args: argparse.Namespace) -> int:
    if not args.watch and (args.on_done is not None or args.auto_download):
        raise UsageError("--on-done and --auto-download follow jobs: use them with --watch (or with wait)")
    if args.watch:
        if args.json:
            raise UsageError("--watch draws a live table; a script waits with `braas-hpc wait JOB --json`")
        return await _watch_status(args)
    if args.jobs and all(group.is_group(name) for name in args.jobs):
        return await cli_group.status(args, _print_json)
    recoveries: list[recovery.Recovery] = []
    if args.no_recover:
        report = await monitor.status_report(args.jobs or None)
    else:
        report, recoveries = await recovery.status_and_recover(args.jobs or None)
    _ask_about_host_keys(report)
    _tell_recoveries(recoveries)
    estimates = await cli_costs.estimates(report)
    # the jobs over several clusters, with their parts above
    groups = [] if args.jobs else await group.every_group(ask_host_keys=can_ask(pool.prompts))
    if args.json:
        _print_json({"jobs": [{**e, **({"estimate": estimates[e["job"]]} if e["job"] in estimates else {})}
                              for e in report.to_json()], **({"groups": groups} if groups else {})})
    else:
        print("\n".join(_report_lines(report) + [plain(f"{job}: {costs.compared(e)}") for job, e in estimates.items()]
                        + [plain(line) for g in groups for line in cli_group.lines(g)]))
    return PARTIAL if report.errors else 0


async def _watch_status(args: argparse.Namespace) -> int:
    """Until every job shown has ended: a table redrawn in place on a terminal; elsewhere (a pipe, a
    log) the lines again whenever something changed."""
    if args.jobs and all(group.is_group(name) for name in args.jobs):
        return await cli_group.watch(args, out)
    live = Live(console=out, auto_refresh=False) if out.is_terminal else None
    shown: list[str] = []
    report = monitor.StatusReport([])
    # --on-done and --auto-download: for the jobs still going when the watch begins, not for old ones.
    going = {r.name for r in registry.list_jobs() if r.state not in TERMINAL}
    ends = _job_end(args, going.__contains__)
    with live or contextlib.nullcontext():
        async for report, recoveries in watch.watch(args.jobs or None, args.poll_max, recover=not args.no_recover):
            _ask_about_host_keys(report)
            _tell_recoveries(recoveries)
            await ends.seen(report)
            # Jobs over several clusters are driven at each poll too (their members are among the jobs).
            groups = await group.every_group(ask_host_keys=can_ask(pool.prompts)) if not args.jobs else []
            group_lines = [line for g in groups for line in cli_group.lines(g)]
            if live is not None:
                live.update(RichGroup(_status_table(report), Text("\n".join(group_lines))), refresh=True)
                continue
            lines = _report_lines(report) + _live_lines(report) + group_lines
            if lines != shown:
                print("\n".join(lines), flush=True)
                shown = lines
    return PARTIAL if report.errors else 0


async def cmd_forget(args: argparse.Namespace) -> int:
    groups = [name for name in dict.fromkeys(args.jobs) if group.is_group(name)]
    for name in groups if not args.force else ():  # a group with frames not handed out has not ended
        if (state := (await group.look(name, drive=False)).state) not in TERMINAL:
            raise UsageError(f"{name} is {state} (braas-hpc cancel {name}), or forget it anyway with --force")
    jobs = [job for name in dict.fromkeys(args.jobs) for job in (group.member_jobs(name) if name in groups else [name])]
    if not args.force:
        # Only what the registry records as not ended is asked about: an ended job is then recorded so.
        live = [r.name for r in map(registry.get_job, jobs) if r.state not in TERMINAL]
        if live:
            await monitor.status_report(live)
    try:
        forgotten = registry.forget(jobs, None if args.force else TERMINAL)
    except registry.StillActive as error:
        raise UsageError(f"{error} (braas-hpc cancel {error.record.name}), or forget it anyway with --force") from None
    for name in groups:
        registry.forget_group(name)
    if args.json:
        _print_json({"forgotten": [r.name for r in forgotten]})
    else:
        for r in forgotten:
            print(f"forgot {r.name} ({r.preset}, {r.state}); its files on the cluster are untouched")
    return 0


def _tell_recoveries(recoveries: list[recovery.Recovery]) -> None:
    """On stderr, with --json too: stdout stays the document."""
    for r in recoveries:
        if r.error:
            err.print(f"could not resubmit the lost frames of {r.job}: {plain(r.error)}")
        elif r.plan is not None:
            avoid = f", avoiding {', '.join(r.plan.exclude_nodes)}" if r.plan.exclude_nodes else ""
            err.print(f"{r.job}: {len(r.plan.frames)} lost frame(s) resubmitted as round {r.round} "
                      f"({r.plan.chunk} per task{avoid})", highlight=False)


async def cmd_wait(args: argparse.Namespace) -> int:
    if group.is_group(args.job):
        return await cli_group.wait(args, err, _print_json)
    ends = _job_end(args)
    with cli_progress.shown(err, args.json):
        final = await watch.wait(args.job, timeout_s=args.timeout, poll_max_s=args.poll_max,
                                 recover=not args.no_recover, on_status=ends.status)
    if args.json:
        _print_json(final.to_json())
    else:
        print(f"{final.job}  {final.state}  frames {final.frames_done}/{final.frames_total}")
        if final.missing:
            print(f"missing frames: {', '.join(map(str, final.missing))}")
    return 0 if final.state == "COMPLETED" and not final.missing else 1


async def cmd_cancel(args: argparse.Namespace) -> int:
    if group.is_group(args.job):
        return await cli_group.cancel(args, _print_json)
    ids = await service.cancel(job_context(args.job))
    if args.json:
        _print_json({"job": args.job, "cancelled": list(ids)})
    else:
        print(f"cancelled {args.job} (scheduler ids {', '.join(ids)})" if ids else f"{args.job} had already ended")
    return 0


async def cmd_resubmit(args: argparse.Namespace) -> int:
    if group.is_group(args.job):
        raise UsageError(f"{args.job} runs over several clusters: it hands the frames a cluster lost to its clusters "
                         "again by itself (braas-hpc wait or status keeps it going)")
    avoid = None if args.exclude is None else tuple(n.strip() for n in args.exclude.split(",") if n.strip())
    with cli_progress.shown(err, args.json):
        result, chosen = await recovery.resubmit_missing(job_context(args.job), avoid)
    if args.json:
        _print_json({**result.to_json(), "chunk": chosen.chunk, "exclude_nodes": list(chosen.exclude_nodes)})
    else:
        avoiding = f", avoiding {', '.join(chosen.exclude_nodes)}" if chosen.exclude_nodes else ""
        print(f"resubmitted frames {result.frames} of {result.job} as {result.tasks} array task(s) of "
              f"{chosen.chunk}{avoiding}, scheduler id {', '.join(result.scheduler_ids)}")
    return 0


async def cmd_logs(args: argparse.Namespace) -> int:
    if args.task is not None and args.task < 1:
        raise UsageError("--task counts from 1 (the array task number)")
    if group.is_group(args.job):
        return await cli_group.show_logs(args, _print_json)
    found = await logs.job_logs(job_context(args.job), task=args.task, lines=args.lines)
    if args.json:
        _print_json(found.to_json())
    else:
        print(plain(found.text()))
    return 0


async def cmd_download(args: argparse.Namespace) -> int:
    if group.is_group(args.job):
        return await cli_group.download(args, _print_json)
    dest = Path(args.dest) if args.dest else Path.cwd() / args.job
    columns = (TextColumn("[bold]downloading"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True, disable=args.json) as bar:
        task = bar.add_task("frame", total=None)

        def on_bytes(done: int, total: int) -> None:  # the frame being fetched
            bar.update(task, completed=done, total=total)

        def each_round(got: transfer.DownloadResult) -> None:
            if args.follow and got.downloaded and not args.json:
                err.print(f"{got.downloaded} new frame(s) in {dest}", highlight=False)

        result = await transfer.download(job_context(args.job), dest, on_bytes, follow=args.follow,
                                         on_round=each_round)
    if args.json:
        _print_json(result.to_json())
    else:
        print(f"downloaded {result.downloaded} frame(s), {result.skipped} already here, into {result.dest}")
        if result.ignored:
            print(f"ignored {len(result.ignored)} file(s) that are not frames: {plain(', '.join(result.ignored[:5]))}")
    return 0


async def cmd_video(args: argparse.Namespace) -> int:
    from .core import video

    video.check_request(args.codec, args.fps)
    dest = Path(args.dest) if args.dest else Path.cwd() / args.job
    columns = (TextColumn("[bold]downloading"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True, disable=args.json) as bar:
        task = bar.add_task("frame", total=None)
        def on_bytes(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if group.is_group(args.job):  # one animation over several clusters: every member's frames, one movie
            made = await video.make_group_video(args.job, group.members(args.job), group.film_frames(args.job), dest,
                                                args.codec, args.fps, args.allow_gaps, on_bytes)
        else:
            made = await video.make_video(job_context(args.job), dest, args.codec, args.fps, args.allow_gaps,
                                          on_bytes)
    if args.json:
        _print_json(made.to_json())
        return 0
    where = "made by the cluster's finish step" if made.made_on == "cluster" else \
        f"made here with {made.encoder} in {made.seconds:.1f} s"
    print(f"{made.video} ({made.codec}, {made.fps:g} frames per second), {where}")
    if made.gaps:
        print(f"{len(made.gaps)} missing frame(s) show the frame before them: {made.gaps[:10]}")
    return 0


async def cmd_test(args: argparse.Namespace) -> int:
    report = await probe(args.preset, args.ssh_backend)
    if args.json:
        _print_json(report.to_json())
        return 0 if report.workdir_ok else 1
    print(f"{report.preset}: connected to {report.host} with {report.backend} in {report.connect_ms:.0f} ms; "
          f"a command takes {report.command_ms:.1f} ms")
    print(plain(f"login node {report.node} ({report.arch}); found: {' '.join(report.commands) or 'nothing'}"))
    print(f"working directory {report.workdir}: {'writable' if report.workdir_ok else 'MISSING or not writable'}")
    return 0 if report.workdir_ok else 1


async def cmd_install(args: argparse.Namespace) -> int:
    from .core.cluster_blender import BlenderSource
    from .core.install import install

    if bool(args.blender_url) != bool(args.blender_sha256):
        raise UsageError("--blender-url and --blender-sha256 go together: the download is checked against it")
    source = BlenderSource(url=args.blender_url or "", sha256=args.blender_sha256 or "",
                           upload=Path(args.blender_upload) if args.blender_upload else None,
                           path=args.blender_path or "", module=args.blender_module or "")
    with cli_progress.shown(err, args.json):
        report = await install(args.preset, source, args.ssh_backend)
    if args.json:
        _print_json(report.to_json())
        return 0
    scripts = report.scripts
    if scripts.changed:
        print(f"installed {', '.join(scripts.uploaded)} into {scripts.directory}")
    else:
        print(f"already installed: {scripts.directory} matches this release ({scripts.version}); nothing sent")
    if report.blender is not None:
        done = report.blender
        what = "installed" if done.changed else "already there" if done.directory else "recorded"
        print(f"Blender {what}: {done.installed.blender} {' '.join(done.installed.env)} "
              f"({done.installed.version or 'did not run on the login node'}); jobs use it ({report.record})")
    print(f"took {report.seconds:.2f} s")
    return 0


async def cmd_workdir(args: argparse.Namespace) -> int:
    from .core.transport import transport_for
    from .core.workdir import find_workdir, set_workdir

    preset = load_preset(args.preset)
    transport = transport_for(preset, args.ssh_backend)
    if args.set:
        written = await set_workdir(preset, transport, args.set)
        if args.json:
            _print_json({"preset": preset.name, "workdir": args.set, "file": str(written)})
        else:
            print(f"workdir of {preset.name} set to {args.set} in {written}")
        return 0
    candidates = await find_workdir(preset, transport)
    if args.json:
        _print_json({"preset": preset.name, "candidates": [c.to_json() for c in candidates]})
        return 0
    if preset.workdir_hint:
        print(f"the site documents: {preset.workdir_hint}")
    for c in candidates:
        state = "writable" if c.writable else "exists, not writable" if c.exists else "missing"
        print(plain(f"{c.path}  ({c.source}; {state})"))
    if not candidates:
        print("no candidates found on the cluster: ask the site, then run with --set PATH")
    else:
        print(f"nothing was changed; to use one: braas-hpc workdir {preset.name} --set PATH")
    return 0


async def cmd_extension(args: argparse.Namespace) -> int:
    from .extension import PLATFORM_TAGS, build

    built = await asyncio.to_thread(build, Path(args.out), args.platform or list(PLATFORM_TAGS))
    if args.json:
        _print_json({"built": [str(p) for p in built]})
    else:
        for path in built:
            print(path)
    return 0


async def cmd_presets(args: argparse.Namespace) -> int:
    if args.action == "add":
        return _add_preset(args)
    presets = all_presets()
    for preset in presets:  # what only the preset's scheduler can check
        scheduler_for(preset.scheduler).gpu_request(preset)
    cache = HashCache()
    checks = {p.name: readiness.local_checks(p, cache) for p in presets}
    if args.json:
        _print_json({"presets": [{"name": p.name, "title": p.title, "scheduler": p.scheduler, "host": p.host,
                                  "yours": not is_builtin(p), "ready": readiness.summary(checks[p.name]),
                                  "unconfirmed": list(p.unconfirmed),
                                  "checks": [c.to_json() for c in checks[p.name]]} for p in presets]})
        return 0
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("preset", "scheduler", "ready", "title"):
        table.add_column(column, overflow="fold")
    for p in presets:
        ready = readiness.summary(checks[p.name])
        table.add_row(p.name + ("" if is_builtin(p) else " (yours)"), p.scheduler,
                      Text(ready, style="green" if ready == "ready" else "yellow"), p.title)
    out.print(table)
    for p in presets:  # facts no site page confirmed: the user checks them (`doctor` confirms what a login can)
        if p.unconfirmed:
            print(f"{p.name}: {unconfirmed_summary(p)}")
    print("what a preset needs, and how: braas-hpc doctor PRESET; your own: braas-hpc presets add NAME --base SITE")
    return 0


def _add_preset(args: argparse.Namespace) -> int:
    if not args.name:
        raise UsageError("presets add needs a NAME: braas-hpc presets add NAME --base SITE --account A ...")
    path = user_preset_path(args.name)
    if path.exists() and not args.force:
        raise UsageError(f"preset {args.name} already exists ({path}); --force replaces it")
    if not args.base and not args.host:
        raise UsageError(f"a preset needs a --base (one of: {', '.join(catalogue())}) or a --host and --scheduler")
    values = {key: getattr(args, key) for key in ("host", "user", "account", "workdir", "partition_cpu",
                                                  "partition_gpu", "key_file", "proxy_jump", "ssh_backend",
                                                  "scheduler", "blender", "title") if getattr(args, key, None)}
    if args.port:
        values["port"] = args.port
    preset = save_user_preset(args.name, values, base=args.base or "")
    checks = readiness.local_checks(preset)
    if args.json:
        _print_json({"name": preset.name, "file": str(path), "ready": readiness.summary(checks),
                     "checks": [c.to_json() for c in checks]})
        return 0
    print(f"wrote {path}" + (f" (on top of the built-in {args.base})" if args.base else ""))
    for check in checks:
        if check.ok is False:
            print(f"  to do, {check.what}: {check.found}; {check.fix}")
    print(f"next: braas-hpc doctor {preset.name}")
    return 0


async def cmd_doctor(args: argparse.Namespace) -> int:
    checks = await readiness.doctor(args.preset, args.ssh_backend)
    if args.json:
        _print_json({"preset": args.preset, "ready": readiness.summary(checks),
                     "checks": [c.to_json() for c in checks]})
    else:
        for check in checks:
            mark = {True: "ok  ", False: "FAIL", None: "--  "}[check.ok]
            print(plain(f"{mark} {check.what:9} {check.found}"))
            if check.ok is False and check.fix:
                print(plain(f"     {'':9} to fix: {check.fix}"))
        print(f"{args.preset}: {readiness.summary(checks)}")
    return 1 if any(c.ok is False for c in checks) else 0


async def cmd_keeper(args: argparse.Namespace) -> int:
    """The connection keeper: the connections it holds, or end it (and them)."""
    try:
        answer = await keeper_link.ask_keeper(args.action)
    except KeeperUnavailable as exc:
        if args.json:
            _print_json({"running": False, "kept": [], "why": str(exc)})
        else:
            print(f"no connection keeper is running ({exc})" if not isinstance(exc, KeeperNotRunning)
                  else "no connection keeper is running")
        return 0
    if args.json:
        _print_json({"running": args.action == "status", **answer})
    elif args.action == "stop":
        print(f"connection keeper stopped; {answer.get('closed', 0)} kept connection(s) closed")
    else:
        kept = answer.get("kept", [])
        print(f"connection keeper {answer.get('version')} (pid {answer.get('pid')}): {len(kept)} kept connection(s)")
        for k in kept:
            left = max(0.0, k["keep_s"] - k["idle_s"])
            who = plain(f"{k['user']}@{k['host']}:{k['port'] or 22}")
            state = "in use" if k["busy"] else f"idle {k['idle_s']:.0f} s, closes in {left / 60:.0f} min"
            print(f"  {who:40} {k['backend']:9} {state}")
    return 0


def _add_log_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="say what is being done (connections, jobs, watchers)")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="also every command run on a cluster, with its exit status and time")
    parser.add_argument("--log-file", metavar="FILE", default=default,
                        help="append the --debug log to FILE (created private to you), whatever is shown")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="braas-hpc", description="Render Blender scenes on HPC clusters.",
                                     epilog=f"exit status: 0 success, {EXIT_FAILED} the job or command failed, "
                                            f"{EXIT_USAGE} bad usage or input, {EXIT_UNREACHABLE} a cluster could not "
                                            f"be reached (status: some did not answer), {EXIT_TIMED_OUT} wait "
                                            f"--timeout ran out, {EXIT_INTERRUPTED} interrupted")
    parser.add_argument("--version", action="version", version=f"braas-hpc {VERSION}")
    _add_log_options(parser, argparse.SUPPRESS)  # also after the verb: `braas-hpc submit ... --debug`
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    after_verb = argparse.ArgumentParser(add_help=False)
    _add_log_options(after_verb, argparse.SUPPRESS)

    def add(name: str, handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], help_: str
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[after_verb])
        p.set_defaults(handler=handler)
        p.add_argument("--json", action="store_true", help="print one JSON document")
        return p

    def add_scene(p: argparse.ArgumentParser) -> None:
        p.add_argument("scene", metavar="SCENE", help="the .blend file")
        p.add_argument("--frames", help="frames: 7, 1-250, 1-100:10 or 1,5,10-20 (default: the scene's range and step)")
        p.add_argument("--chunk", type=int, default=1, help="frames per array task (default 1)")
        p.add_argument("--format", type=str.upper, choices=tuple(IMAGE_FORMATS),
                       help="the frames' file format (default: the scene's, with its colour settings)")
        p.add_argument("--resolution-percentage", type=int, metavar="P", help="default: the scene's")
        p.add_argument("--samples", type=int, metavar="N", help="Cycles samples (default: the scene's)")
        p.add_argument("--split-samples", type=int, metavar="N",
                       help="a still only: render its samples as N tasks, each its own range of them, merged and "
                            "denoised on the cluster into one image")

    def add_pack(p: argparse.ArgumentParser) -> None:
        p.add_argument("--pack", choices=("packed", "dir"), default="packed",
                       help="packed: one .blend with its resources packed (default); dir: the .blend and its "
                            "dependency tree, traced with blender-asset-tracer")

    def add_backend(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ssh-backend", choices=SSH_BACKENDS, help="override the preset's SSH back end")

    p = add("render", cmd_render, "render a scene on this computer and wait for it (the built-in local preset)")
    add_scene(p)
    p.add_argument("--out", metavar="DIR", help="also copy the frames into DIR")
    add_pack(p)

    p = add("submit", cmd_submit, "submit a scene to a cluster (or this computer's queue: --preset local); "
            "prints the job name last")
    add_scene(p)
    p.add_argument("--preset", required=True,
                   help="cluster preset (see `braas-hpc presets`); several, comma-separated (karolina,lumi,local): "
                        "one animation spread over those clusters")
    p.add_argument("--gpu", action="store_true", help="render on GPUs")
    p.add_argument("--gpu-backend", metavar="KIND",
                   help="CUDA, OPTIX, HIP, ONEAPI or METAL, +CPU to add the cores (default: the partition's)")
    p.add_argument("--walltime", type=int, metavar="MIN", help="minutes per array task")
    p.add_argument("--max-parallel", type=int, default=0, metavar="N", help="array tasks at once (0: no limit)")
    p.add_argument("--account", help="account/project to charge (default: the preset's)")
    p.add_argument("--partition", help="partition or queue (default: the preset's for CPU or GPU)")
    p.add_argument("--email", metavar="ADDRESS", help="mail when the job ends or fails")
    p.add_argument("--memory", type=int, metavar="GB", help="memory per array task, where the site allows it")
    p.add_argument("--dry-run", action="store_true", help="print the batch script and submit command; send nothing")
    p.add_argument("--estimate", action="store_true",
                   help="print the expected wall time and core-/GPU-/node-hours, and the allocation left; send nothing")
    p.add_argument("--allow-scripts", action="store_true",
                   help="let Python embedded in the .blend (drivers, scripts) run on the cluster for this job")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="rounds braas-hpc may resubmit by itself for frames lost to failures (default 2; 0: none)")
    p.add_argument("--name", metavar="PROJECT", help="names the job (default: the scene's file name)")
    p.add_argument("--video", type=str.lower, choices=VIDEO_CODECS,
                   help="also make a movie of the frames in the job's finish step (the preset must name an ffmpeg)")
    p.add_argument("--fps", type=float, metavar="N", help="the movie's frames per second (default: the scene's)")
    add_pack(p)
    add_backend(p)

    cli_costs.add_parser(add, cmd_allocation)
    cli_dashboard.add_parser(add)

    p = add("test", cmd_test, "connect to a cluster, run a probe and report")
    p.add_argument("preset", metavar="PRESET")
    add_backend(p)

    p = add("install", cmd_install, "install the cluster scripts (and optionally Blender) on a cluster")
    p.add_argument("preset", metavar="PRESET")
    p.add_argument("--blender-url", metavar="URL", help="download this Blender archive on the cluster")
    p.add_argument("--blender-sha256", metavar="HEX", help="the archive's SHA-256 (required with --blender-url)")
    p.add_argument("--blender-upload", metavar="ARCHIVE", help="upload this Blender archive from here")
    p.add_argument("--blender-path", metavar="PATH", help="use the Blender at this path on the cluster")
    p.add_argument("--blender-module", metavar="NAME", help="use the site's module (module load NAME)")
    add_backend(p)

    p = add("workdir", cmd_workdir, "find a cluster's working directory; set it only with --set")
    p.add_argument("preset", metavar="PRESET")
    p.add_argument("--set", metavar="PATH", help="write this directory into your preset (it must exist)")
    add_backend(p)

    no_recover = "report lost frames without resubmitting them (the job's retries are otherwise used)"
    poll_max = {"type": float, "metavar": "SECONDS",
                "help": f"longest pause between polls, which start at 2 s and double "
                        f"(default 30, or ${watch.POLL_MAX_ENV})"}
    def add_job_end(p: argparse.ArgumentParser) -> None:
        p.add_argument("--on-done", metavar="COMMAND",
                       help="run COMMAND once for each job when it ends (no shell; the job's name, state, frames "
                            "and folders in BRAAS_* environment variables, see README)")
        p.add_argument("--auto-download", action="store_true", help="download frames as they land")
        p.add_argument("--download-dir", metavar="DIR", help="with --auto-download: each job's frames in DIR/JOB "
                                                             "(default ./JOB)")

    p = add("status", cmd_status, "state of jobs (all, or the ones named); lost frames are resubmitted")
    p.add_argument("jobs", nargs="*", metavar="JOB")
    p.add_argument("--no-recover", action="store_true", help=no_recover)
    p.add_argument("--watch", action="store_true", help="keep showing them until every one has ended")
    p.add_argument("--poll-max", **poll_max)
    add_job_end(p)
    p.epilog = (f"exit status: 0 every job's cluster answered; {PARTIAL} some did not (the others' jobs are shown, "
                "each one that did not answer is listed with its error; with --json, as the job's \"error\"); "
                "1 a failure; 2 bad input")

    p = add("forget", cmd_forget, "remove jobs from the local job list; nothing on the cluster changes")
    p.add_argument("jobs", nargs="+", metavar="JOB")
    p.add_argument("--force", action="store_true",
                   help="also a job still pending or running (it may still use the allocation: cancel it first)")

    p = add("wait", cmd_wait, "wait until a job ends; exit 0 only if every frame exists")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--timeout", type=float, metavar="SECONDS")
    p.add_argument("--no-recover", action="store_true", help=no_recover)
    p.add_argument("--poll-max", **poll_max)
    add_job_end(p)

    p = add("download", cmd_download, "fetch the frames of a job that are not here yet")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--dest", metavar="DIR", help="where to put the frames (default ./JOB)")
    p.add_argument("--follow", action="store_true", help="keep fetching new frames until the job has ended")

    p = add("video", cmd_video, "a movie of a job's frames: downloads them (and the cluster's movie, if the job "
            "made one), else makes it here")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--codec", type=str.lower, choices=VIDEO_CODECS, default="h264", help="default h264")
    p.add_argument("--fps", type=float, metavar="N", help="frames per second (default: the scene's)")
    p.add_argument("--dest", metavar="DIR", help="where the frames and the movie go (default ./JOB)")
    p.add_argument("--allow-gaps", action="store_true",
                   help="make the movie even with frames missing (each shows the frame before it)")

    p = add("cancel", cmd_cancel, "cancel a job: every array task of every round")
    p.add_argument("job", metavar="JOB")

    p = add("logs", cmd_logs, "the job's settings and the last lines of its logs on the cluster")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--task", type=int, help="only this array task's logs (every round's)")
    p.add_argument("--lines", type=int, default=logs.TAIL_LINES, help=f"lines from the end (default {logs.TAIL_LINES})")

    p = add("resubmit", cmd_resubmit, "submit only the missing frames of an ended job again")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--exclude", metavar="NODES", help="comma-separated nodes the new round must not use (Slurm; "
                   "default: those where tasks of the job died twice, as automatic recovery does)")

    p = add("presets", cmd_presets, "list the cluster presets and whether each is ready; or add one of yours")
    p.add_argument("action", nargs="?", choices=["list", "add"], default="list")
    p.add_argument("name", nargs="?", metavar="NAME", help="add: the new preset's name")
    p.add_argument("--base", metavar="SITE", help="add: the built-in preset it starts from (every key not given)")
    p.add_argument("--force", action="store_true", help="add: replace a preset of yours of that name")
    for key, what in (("host", "the login node"), ("user", "your user name there"),
                      ("account", "the project charged"), ("workdir", "your working directory there (absolute)"),
                      ("partition-cpu", "the CPU partition"), ("partition-gpu", "the GPU partition"),
                      ("key-file", "your private key"), ("proxy-jump", "a gateway, OpenSSH ProxyJump syntax"),
                      ("scheduler", "slurm, pbs or sge (no --base)"), ("blender", "Blender's command there"),
                      ("title", "a description")):
        p.add_argument(f"--{key}", help=f"add: {what}")
    p.add_argument("--port", type=int, help="add: the SSH port")
    p.add_argument("--ssh-backend", choices=SSH_BACKENDS, help="add: how to connect")

    p = add("doctor", cmd_doctor, "check a preset on its cluster (login, account, workdir, scripts, Blender) and "
            "say what to do")
    p.add_argument("preset", metavar="PRESET")
    p.add_argument("--ssh-backend", choices=SSH_BACKENDS)

    p = add("keeper", cmd_keeper, "the connections kept open between commands: list them, or close them all")
    p.add_argument("action", choices=["status", "stop"])

    p = add("extension", cmd_extension, "build the Blender extension zips (one per platform, wheels bundled)")
    p.add_argument("action", choices=["build"])
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--platform", action="append", help="linux-x64, windows-x64, macos-arm64, macos-x64 (default: all)")

    p = add("gc", cmd_gc, "list store files no job uses on a cluster; remove them with --yes")
    p.add_argument("preset", metavar="PRESET")
    p.add_argument("--yes", action="store_true", help="remove them (default: only list them)")

    from braas_hpc_interactive.cli import add_interactive  # the interactive add-on's verbs

    add_interactive(sub)
    return parser


async def _run(args: argparse.Namespace) -> int:
    try:
        return await args.handler(args)
    finally:
        await pool.close_all()


def _trust_and_retry(exc: HostKeyUnknown, prompts: TerminalPrompts) -> bool:
    """Show an unknown host's fingerprint; record its key only on an explicit yes."""
    err.print(Text(plain(str(exc)), style="bold yellow"))
    if not prompts.confirm(f"Trust the {exc.key_type} key {exc.fingerprint} of {exc.host}:{exc.port} "
                           f"and record it in {exc.known_hosts}?"):
        err.print("not trusted; nothing was recorded. (In a script, run `braas-hpc test PRESET` in a terminal "
                  "once to review the key.)", highlight=False)
        return False
    path = trust_host_key(exc.known_hosts, exc.host, exc.port, exc.public_key)
    err.print(f"recorded in {path}", highlight=False)
    return True


# What Ctrl+C left, and how to go on: nothing is ever half-written (uploads and downloads land under their
# names only when whole; an interrupted submission is resumed by the same request: core.intents).
RESUME_HINTS = {
    "submit": "the same command again resumes this submission: what was sent is kept, nothing is submitted twice",
    "resubmit": "braas-hpc status {job} shows whether the new round was submitted; if not, resubmit again",
    "wait": "the job goes on: braas-hpc wait {job}",
    "status": "the jobs go on: braas-hpc status",
    "download": "the frames already here are kept and checked: braas-hpc download {job} fetches the rest",
    "install": "what was installed is kept: the same command goes on from there",
}


def main(argv: list[str] | None = None, prompts: TerminalPrompts | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cli_logging.configure(
            debug=getattr(args, "debug", False) or os.environ.get("BRAAS_HPC_DEBUG") == "1",
            verbose=getattr(args, "verbose", False), log_file=getattr(args, "log_file", None))
    except BraasError as exc:
        return _failed(args, _error_kind(exc), str(exc), exc.exit_code)
    prompts = prompts or TerminalPrompts()
    pool.prompts = prompts
    try:
        try:
            return asyncio.run(_run(args))
        except HostKeyUnknown as exc:
            if not _trust_and_retry(exc, prompts):
                return _failed(args, "host_key", str(exc), exc.exit_code, said=True)
            return asyncio.run(_run(args))
    except BraasError as exc:
        return _failed(args, _error_kind(exc), str(exc), exc.exit_code)
    except OSError as exc:  # this computer's own refusal (a full disk, a folder not ours): said, not a traceback
        logging.getLogger("braas_hpc").debug("unexpected OSError", exc_info=True)
        return _failed(args, "system", cli_logging.describe_os_error(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        hint = RESUME_HINTS.get(args.command, "")
        message = f"interrupted{'; ' + hint.format(job=getattr(args, 'job', '')) if hint else ''}"
        return _failed(args, "interrupted", message, EXIT_INTERRUPTED)


def _error_kind(exc: BraasError) -> str:
    """The `kind` of a `--json` error, for scripts: what failed, not how it was said."""
    if kind := connection_failure_kind(exc):
        return kind
    return "timeout" if isinstance(exc, WaitTimedOut) else "usage" if isinstance(exc, UsageError) else "failed"


def _failed(args: argparse.Namespace, kind: str, message: str, code: int, said: bool = False) -> int:
    """Say why the command failed on stderr and, with `--json`, as the one JSON document on stdout:
    {"error": {"kind", "message", "exit_code"}}, so a script reads the reason where it reads results."""
    if not said:
        err.print(Text("braas-hpc: error:" if kind != "interrupted" else "braas-hpc:", style="bold red"),
                  plain(message))
    if getattr(args, "json", False):
        _print_json({"error": {"kind": kind, "message": plain(message), "exit_code": code}})
    return code


if __name__ == "__main__":
    sys.exit(main())
