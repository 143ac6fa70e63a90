"""Consecutive CLI commands with and without the connection keeper, per SSH back end and link delay.

Each command is a real `python -m braas_hpc.cli` process, as a user types it, to the test cluster through
tests/testbed/tcpproxy.py (which adds the one-way delay; 0 ms still goes through it, so both modes pay the
same hop). Without the keeper every command logs in; with it only the first does (it also starts the
keeper). Reported: the first command, and the median of the others, for `test PRESET` and for `status`
of one job (a held Slurm job, cancelled at the end).

    python3 bench/keeper_bench.py [--commands 10] [--delays 0,25] [--backends asyncssh,paramiko,openssh]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from braas_hpc.core import registry  # noqa: E402
from braas_hpc.core.jobs import JobSpec  # noqa: E402
from braas_hpc.core.presets import load_preset  # noqa: E402
from braas_hpc.core.transport import pool, transport_for  # noqa: E402
from braas_hpc.core.transport.keeper import link as keeper_link  # noqa: E402
from braas_hpc.core.transport.keeper import sockets  # noqa: E402
from tests.testbed import testbed as tb  # noqa: E402
from tests.testbed.tcpproxy import running_proxy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_preset(bed: tb.Testbed, name: str, port: int, backend: str, known: Path) -> None:
    text = bed.preset_file.read_text()
    for old, new in ((f'name = "{bed.preset_file.stem}"', f'name = "{name}"'),
                     (f"port = {bed.ssh_port}", f"port = {port}"),
                     ('ssh_backend = "asyncssh"', f'ssh_backend = "{backend}"'),
                     (f'known_hosts = "{bed.known_hosts}"', f'known_hosts = "{known}"')):
        text = text.replace(old, new)
    (bed.preset_file.parent / f"{name}.toml").write_text(text)


def one_command(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "braas_hpc.cli", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return took


def stop_keeper() -> None:
    with contextlib.suppress(sockets.KeeperUnavailable):
        asyncio.run(keeper_link.ask_keeper("stop"))
    time.sleep(0.3)


def series(argv: list[str], commands: int, kept: bool) -> tuple[float, float]:
    env = {**os.environ, "BRAAS_HPC_KEEPER": "on" if kept else "off"}
    times = [one_command(argv, env) for _ in range(commands)]
    return times[0], statistics.median(times[1:])


async def held_job(preset: str) -> str:
    try:
        done = await transport_for(load_preset(preset)).run(["sbatch", "--parsable", "--hold", "-p", "qcpu",
                                                             "--wrap", "true"])
        return done.stdout.strip().split(";")[0]
    finally:
        await pool.close_all()


async def cancel(preset: str, job_id: str) -> None:
    try:
        await transport_for(load_preset(preset)).run(["scancel", job_id], check=False)
    finally:
        await pool.close_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=10)
    parser.add_argument("--delays", default="0,25", help="one-way delays in ms, comma-separated")
    parser.add_argument("--backends", default="asyncssh,paramiko,openssh")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bkb-", dir="/tmp"))
    os.environ.update(BRAAS_HPC_CONFIG_DIR=str(work / "config"), BRAAS_HPC_DATA_DIR=str(work / "data"),
                      BRAAS_HPC_KEEPER_DIR=str(work / "k"), BRAAS_HPC_KEEPER="off")
    os.environ.pop("SSH_AUTH_SOCK", None)
    bed = tb.up()
    pinned = Path(bed.known_hosts).read_text().split("\n")[0].split(maxsplit=1)[1]
    job_id = asyncio.run(held_job("testbed"))
    rows = []
    try:
        for delay in (float(d) for d in args.delays.split(",")):
            with running_proxy("127.0.0.1", bed.ssh_port, delay_ms=delay) as proxy:
                known = work / f"known_hosts_{proxy.port}"
                known.write_text(f"[127.0.0.1]:{proxy.port} {pinned}\n")
                for backend in args.backends.split(","):
                    name = f"kb-{backend}-{int(delay)}"
                    write_preset(bed, name, proxy.port, backend, known)
                    spec = JobSpec(name=f"bench-{name}", preset=name, scene="/s.blend", frames=(1,), tasks=((1,),))
                    registry.add_job(spec, f"{bed.workdir}/braas-hpc", {job_id: 1}, "PENDING")
                    for verb, argv in (("test", ["test", name]), ("status", ["status", f"bench-{name}"])):
                        figures = {}
                        for kept in (False, True):
                            figures[kept] = series(argv, args.commands, kept)
                            stop_keeper()
                        row = {"delay_ms": delay, "backend": backend, "verb": verb,
                               "direct_first": figures[False][0], "direct_median": figures[False][1],
                               "kept_first": figures[True][0], "kept_median": figures[True][1]}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    finally:
        asyncio.run(cancel("testbed", job_id))
    print(f"\n{args.commands} consecutive commands; seconds per command (first; median of the rest)\n")
    print("| one-way delay | back end | command | direct: first / rest | kept: first / rest | rest, kept/direct |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['delay_ms']:.0f} ms | {r['backend']} | `{r['verb']}` | {r['direct_first']:.2f} / "
              f"{r['direct_median']:.2f} | {r['kept_first']:.2f} / {r['kept_median']:.2f} | "
              f"{r['kept_median'] / r['direct_median']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
