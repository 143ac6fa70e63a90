"""Status refresh cost for many tracked jobs (issue 4): remote calls, bytes and parse time.

Submits N held Slurm array jobs on the test cluster (held: they cost the scheduler nothing and stay
PENDING), registers them as braas-hpc jobs in a private registry, and times one `status` refresh
for all of them. The jobs are cancelled at the end.

    python3 bench/status_bench.py [--jobs 1000] [--tasks 4]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from braas_hpc.core import monitor, registry  # noqa: E402
from braas_hpc.core.jobs import JobSpec  # noqa: E402
from braas_hpc.core.presets import load_preset  # noqa: E402
from braas_hpc.core.schedulers.slurm import SlurmScheduler  # noqa: E402
from braas_hpc.core.transport import pool, transport_for  # noqa: E402
from braas_hpc.core.transport.base import Transport  # noqa: E402
from tests.testbed import testbed as tb  # noqa: E402


class Counting:
    """Wraps a transport's run() to count remote calls and the bytes they return."""

    def __init__(self, transport: Transport) -> None:
        self.calls = 0
        self.bytes = 0
        self.outputs: list[str] = []
        self.commands: list[str] = []
        original = transport.run

        async def run(argv, **kwargs):  # noqa: ANN001, ANN202
            self.calls += 1
            self.commands.append(argv[0] if argv[0] != "sh" else "sh (frame listing)")
            done = await original(argv, **kwargs)
            self.bytes += len(done.stdout.encode()) + len(done.stderr.encode())
            self.outputs.append(done.stdout)
            return done

        transport.run = run  # type: ignore[method-assign]


async def submit_held(jobs: int, tasks: int) -> list[str]:
    transport = transport_for(load_preset("testbed"))
    loop = f"for i in $(seq {jobs}); do sbatch --parsable --hold -p qcpu --array=1-{tasks} --wrap true; done"
    done = await transport.run(["sh", "-c", loop], timeout=1800)
    return done.stdout.split()


async def measure(ids: list[str], tasks: int) -> dict[str, float]:
    spec = JobSpec(name="x", preset="testbed", scene="/s.blend", frames=tuple(range(1, tasks + 1)),
                   tasks=tuple((f,) for f in range(1, tasks + 1)))
    for index, job_id in enumerate(ids):
        registry.add_job(dataclasses.replace(spec, name=f"bench-{index:05d}"), "/home/braastb/work/braas-hpc",
                         {job_id: tasks}, "PENDING")
    transport = transport_for(load_preset("testbed"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # slurmdbd records new jobs with a delay: measure the steady state
        done = await transport.run(SlurmScheduler().query_argv(ids))
        if len(done.stdout.splitlines()) >= len(ids):
            break
        await asyncio.sleep(2)
    counter = Counting(transport)
    started = time.perf_counter()
    statuses = await monitor.status()
    refresh = time.perf_counter() - started
    sacct_text = counter.outputs[0]
    started = time.perf_counter()
    parsed = SlurmScheduler().parse_query(sacct_text)
    parse = time.perf_counter() - started
    calls = counter.calls
    await transport.run(["scancel", *ids])
    await pool.close_all()
    print("remote calls:", ", ".join(counter.commands))
    return {"jobs": len(statuses), "calls": calls, "bytes": counter.bytes, "task_lines": len(parsed),
            "refresh_s": refresh, "parse_ms": parse * 1000}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=4)
    args = parser.parse_args()
    tb.up()
    with tempfile.TemporaryDirectory() as data:
        os.environ["BRAAS_HPC_DATA_DIR"] = data

        async def run() -> dict[str, float]:
            ids = await submit_held(args.jobs, args.tasks)
            return await measure(ids, args.tasks)

        result = asyncio.run(run())
    print("| tracked jobs | remote calls | bytes returned | sacct lines parsed | parse time | whole refresh |")
    print("|---|---|---|---|---|---|")
    print(f"| {result['jobs']} | {result['calls']} | {result['bytes']:,} | {result['task_lines']} | "
          f"{result['parse_ms']:.1f} ms | {result['refresh_s']:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
