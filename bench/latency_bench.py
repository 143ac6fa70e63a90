"""Round trips per verb through a slow link: every verb timed through a TCP proxy that adds a one-way
delay in front of the test cluster's sshd, for each SSH back end.

Round trips on the critical path are read from the times, not counted: (T_d - T_0) / 2d, with T_0 the
time through the same proxy without delay. Per repeat, one job goes through every verb: submit (the
scene already in the cluster's store), status (of every job this run registered), logs, download (of
`--frames` new frame files put in the job's out/ on the cluster), cancel, resubmit (its missing frames),
and `test` of the preset. The cluster's jobs are cancelled as soon as they are measured.

    python3 bench/latency_bench.py [--delays 0,25,75] [--backends asyncssh,paramiko,openssh] [--repeat 3]
                                   [--connection open|per-command] [--keeper on|off] [--json FILE]

--connection open: every verb on one connection opened beforehand (what a verb itself costs).
--connection per-command: each verb opens its connection and closes it, as one CLI command does;
--keeper on lets the local connection keeper hold it between commands (BRAAS_HPC_KEEPER).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from braas_hpc.core import logs, monitor, probe, recovery, service, transfer  # noqa: E402
from braas_hpc.core.context import job_context  # noqa: E402
from braas_hpc.core.presets import load_preset  # noqa: E402
from braas_hpc.core.spec import SubmitRequest  # noqa: E402
from braas_hpc.core.transport import pool, transport_for  # noqa: E402
from braas_hpc.core.transport.hostkeys import host_pattern, recorded_keys  # noqa: E402
from tests.helpers import make_sample  # noqa: E402
from tests.testbed import testbed as tb  # noqa: E402
from tests.testbed.tcpproxy import TcpProxy, running_proxy  # noqa: E402

VERBS = ("submit", "status", "logs", "download", "cancel", "resubmit", "test")
# Round trips on an open connection the verbs should need (submit: the scene already in the store).
TARGETS = {"submit": "3", "status": "1", "logs": "1-2", "download": "2 + transfer", "cancel": "1-2",
           "resubmit": "1-2", "test": "-"}
PRESET = "slow"


def write_preset(config: Path, t: tb.Testbed, port: int, workdir: str, backend: str) -> None:
    """A preset reaching the test cluster through the proxy on `port`, trusting the cluster's host key
    under the proxy's address."""
    (key_type, blob), *_ = recorded_keys(Path(t.known_hosts), "127.0.0.1", t.ssh_port)
    known = config / "known_hosts"
    (config / "presets").mkdir(parents=True, exist_ok=True)
    known.write_text(f"{host_pattern('127.0.0.1', port)} {key_type} {base64.b64encode(blob).decode()}\n")
    (config / "presets" / f"{PRESET}.toml").write_text(
        f'name = "{PRESET}"\nscheduler = "slurm"\nhost = "127.0.0.1"\nport = {port}\nuser = "{t.user}"\n'
        f'key_file = "{t.key_file}"\nknown_hosts = "{known}"\nssh_config = "none"\nworkdir = "{workdir}"\n'
        f'ssh_backend = "{backend}"\naccount = "braas"\npartition_cpu = "qcpu"\npartition_gpu = "qgpu"\n')


class Round:
    """One pass of every verb over one new job; `times` holds each verb's seconds."""

    def __init__(self, scene: Path, dest: Path, frames: int, per_command: bool) -> None:
        self.scene, self.dest, self.frames, self.per_command = scene, dest, frames, per_command
        self.times: dict[str, float] = {}
        self.job = ""

    async def timed(self, verb: str, work: Callable[[], Awaitable[Any]]) -> Any:
        if not self.per_command:
            await transport_for(load_preset(PRESET)).connect()  # open before the clock starts
        started = time.perf_counter()
        try:
            return await work()
        finally:
            if self.per_command:
                await pool.close_all()  # what the CLI does when a command ends
            self.times[verb] = time.perf_counter() - started

    async def untimed(self, work: Callable[[], Awaitable[Any]]) -> Any:
        answer = await work()
        if self.per_command:
            await pool.close_all()
        return answer

    async def run(self) -> dict[str, float]:
        request = SubmitRequest(scene=self.scene, preset=PRESET, frames=f"1-{2 * self.frames}",
                                chunk=2 * self.frames, pack="dir", retries=0)
        submitted = await self.timed("submit", lambda: service.submit(request))
        self.job = submitted.job
        await self.timed("status", lambda: monitor.status_report())
        await self.timed("logs", lambda: logs.job_logs(job_context(self.job)))
        await self.untimed(self._seed_frames)
        shutil.rmtree(self.dest, ignore_errors=True)
        got = await self.timed("download", lambda: transfer.download(job_context(self.job), self.dest))
        if got.downloaded < self.frames:
            raise SystemExit(f"download fetched {got.downloaded} frames, expected {self.frames}")
        await self.timed("cancel", lambda: service.cancel(job_context(self.job)))
        await self.untimed(self._lose_frames)  # the sample renders in a moment: some frames may be there
        await self.timed("resubmit", lambda: recovery.resubmit_missing(job_context(self.job)))
        await self.untimed(lambda: service.cancel(job_context(self.job)))
        await self.timed("test", lambda: probe.probe(PRESET))
        return self.times

    async def _lose_frames(self) -> None:
        out = job_context(self.job).paths.out_dir
        await transport_for(load_preset(PRESET)).run(
            ["rm", "-f", "--", *(f"{out}/frame_{n:06d}.png" for n in range(1, self.frames + 1))])

    async def _seed_frames(self) -> None:
        """`frames` frame files of 200 kB, as if tasks had rendered them (the job's own task is cancelled
        before it renders any)."""
        out = job_context(self.job).paths.out_dir
        names = [f"{out}/frame_{n:06d}.png" for n in range(self.frames + 1, 2 * self.frames + 1)]
        await transport_for(load_preset(PRESET)).run(
            ["sh", "-c", 'for f; do head -c 200000 /dev/urandom > "$f"; done', "sh", *names])


def measure(proxy: TcpProxy, delay_ms: float, scene: Path, dest: Path, args: argparse.Namespace
            ) -> dict[str, float]:
    """Median seconds per verb at one delay."""
    proxy.delay_ms = delay_ms
    samples: dict[str, list[float]] = {verb: [] for verb in VERBS}
    per_command = args.connection == "per-command"

    async def warm() -> None:  # the scene into the store and the cluster scripts installed, untimed
        done = await service.submit(SubmitRequest(scene=scene, preset=PRESET, frames="1", pack="dir", retries=0))
        await service.cancel(job_context(done.job))

    async def repeats() -> None:
        await warm()
        for _ in range(args.repeat):
            for verb, seconds in (await Round(scene, dest, args.frames, per_command).run()).items():
                samples[verb].append(seconds)
        await pool.close_all()

    asyncio.run(repeats())
    return {verb: statistics.median(values) for verb, values in samples.items()}


def table(results: dict[str, dict[float, dict[str, float]]], delays: list[float]) -> str:
    slow = [d for d in delays if d > 0]
    head = ["verb", "back end", *(f"{d:g} ms (s)" for d in delays), *(f"round trips at {d:g} ms" for d in slow),
            "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for verb in VERBS:
        for backend, by_delay in results.items():
            base = by_delay[delays[0]][verb]
            trips = [(by_delay[d][verb] - base) / (2 * d / 1000) for d in slow]
            cells = [verb, backend, *(f"{by_delay[d][verb]:.2f}" for d in delays), *(f"{n:.1f}" for n in trips),
                     TARGETS[verb]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delays", default="0,25,75", help="one-way delays in ms; the first is the baseline")
    parser.add_argument("--backends", default="asyncssh,paramiko,openssh")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--frames", type=int, default=4, help="new frames per download")
    parser.add_argument("--connection", choices=("open", "per-command"), default="open")
    parser.add_argument("--keeper", choices=("on", "off"), default="off",
                        help="let the local connection keeper hold connections between commands")
    parser.add_argument("--json", type=Path, help="write the medians here too")
    args = parser.parse_args()
    delays = [float(d) for d in args.delays.split(",")]
    if delays[0] != 0 or len(delays) < 2:
        parser.error("--delays starts with 0 (the baseline) and has at least one more")
    os.environ["BRAAS_HPC_KEEPER"] = args.keeper
    t = tb.up()
    results: dict[str, dict[float, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="braas-latency-") as temp, \
            running_proxy("127.0.0.1", t.ssh_port) as proxy:
        root = Path(temp)
        os.environ["BRAAS_HPC_CONFIG_DIR"] = str(root / "config")
        os.environ["BRAAS_HPC_DATA_DIR"] = str(root / "data")
        workdir = f"{t.workdir}/latency-{secrets.token_hex(4)}"
        scene = make_sample(root / "project")
        try:
            for backend in args.backends.split(","):
                write_preset(root / "config", t, proxy.port, workdir, backend)
                results[backend] = {d: measure(proxy, d, scene, root / "frames", args) for d in delays}
                print(f"{backend}: done", file=sys.stderr)
        finally:
            subprocess.run(tb.ssh_command(tb.Layout.from_env(), f"rm -rf {workdir}"), check=False)
    print(f"connection: {args.connection}, keeper: {args.keeper}, median of {args.repeat}")
    print(table(results, delays))
    if args.json:
        args.json.write_text(json.dumps({"connection": args.connection, "keeper": args.keeper, "results": {
            backend: {str(d): times for d, times in by_delay.items()} for backend, by_delay in results.items()}},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
