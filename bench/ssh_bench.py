"""SSH back-end benchmark on the test cluster (issue 3).

Per back end: 100 small commands on one open connection, and upload/download throughput of one
file, each compared with the system OpenSSH client run in the same session (`ssh` per command,
`scp` for files). Loopback on a 2-core machine is CPU-bound, so the ratios mean more than the
absolute figures.

    python3 bench/ssh_bench.py [--size-mb 500] [--commands 100] [--backends asyncssh,paramiko,openssh]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from braas_hpc.core.transport import SSHTarget, make_transport  # noqa: E402
from tests.testbed import testbed as tb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _ssh_opts(t: tb.Testbed) -> list[str]:
    return ["-i", str(t.key_file), "-o", f"UserKnownHostsFile={t.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-F", "none"]


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def baseline(t: tb.Testbed, local: Path, remote: str, back: Path, commands: int) -> dict[str, float]:
    dest = f"{t.user}@127.0.0.1"
    ssh = ["ssh", *_ssh_opts(t), "-p", str(t.ssh_port), dest, "true"]
    per_command = [_timed(ssh) for _ in range(min(commands, 20))]
    put_s = _timed(["scp", "-q", *_ssh_opts(t), "-P", str(t.ssh_port), str(local), f"{dest}:{remote}"])
    get_s = _timed(["scp", "-q", *_ssh_opts(t), "-P", str(t.ssh_port), f"{dest}:{remote}", str(back)])
    size = local.stat().st_size / 1e6
    return {"command_ms": statistics.median(per_command) * 1000, "put_mb_s": size / put_s, "get_mb_s": size / get_s}


async def measure(backend: str, t: tb.Testbed, local: Path, remote: str, back: Path, commands: int
                  ) -> dict[str, float]:
    target = SSHTarget(host="127.0.0.1", port=t.ssh_port, user=t.user, key_files=(str(t.key_file),),
                       known_hosts=str(t.known_hosts), ssh_config="none", use_agent=False)
    transport = make_transport(backend, target)
    try:
        await transport.connect()
        await transport.run(["true"])  # warm: session set-up paths, SFTP subsystem
        times = []
        for _ in range(commands):
            started = time.perf_counter()
            await transport.run(["true"])
            times.append(time.perf_counter() - started)
        size = local.stat().st_size / 1e6
        started = time.perf_counter()
        await transport.put(local, remote)
        put_s = time.perf_counter() - started
        back.unlink(missing_ok=True)
        started = time.perf_counter()
        await transport.get(remote, back)
        get_s = time.perf_counter() - started
        await transport.run(["rm", "-f", remote])
    finally:
        await transport.close()
    return {"command_ms": statistics.median(times) * 1000, "put_mb_s": size / put_s, "get_mb_s": size / get_s}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--commands", type=int, default=100)
    parser.add_argument("--backends", default="asyncssh,paramiko,openssh")
    args = parser.parse_args()
    t = tb.up()
    local = Path("/var/tmp/braas-bench-upload.bin")
    if not local.exists() or local.stat().st_size != args.size_mb * 1_000_000:
        with local.open("wb") as out:
            for _ in range(args.size_mb):
                out.write(os.urandom(1_000_000))  # incompressible, like rendered EXR/PNG data
    back = Path("/var/tmp/braas-bench-download.bin")
    remote = f"{t.workdir}/bench-{os.getpid()}.bin"
    base = baseline(t, local, remote, back, args.commands)
    rows = {"openssh-cli (baseline)": base}
    for backend in args.backends.split(","):
        rows[backend] = asyncio.run(measure(backend, t, local, remote, back, args.commands))
    subprocess.run(["ssh", *_ssh_opts(t), "-p", str(t.ssh_port), f"{t.user}@127.0.0.1", "rm", "-f", remote])
    back.unlink(missing_ok=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ssh.json").write_text(json.dumps({"size_mb": args.size_mb, "rows": rows}, indent=1))
    print("| back end | command on open connection (ms) | put MB/s | put / scp | get MB/s | get / scp |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['command_ms']:.1f} | {row['put_mb_s']:.0f} | {row['put_mb_s'] / base['put_mb_s']:.2f}"
              f" | {row['get_mb_s']:.0f} | {row['get_mb_s'] / base['get_mb_s']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
