"""A stream's input (Transport.converse, as a submission sends its store files) directly and through the
connection keeper, per SSH back end: MiB/s into `cat >/dev/null` on the test cluster, in 1 MiB blocks as
submit_exchange writes them, and the ratio kept/direct in the same run.

    python3 bench/keeper_converse_bench.py [--mib 256] [--rounds 3] [--backends asyncssh,paramiko,openssh]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from braas_hpc.core.transport import NoPrompts, SSHTarget, Transport, make_transport  # noqa: E402
from braas_hpc.core.transport.keeper import link as keeper_link  # noqa: E402
from braas_hpc.core.transport.keeper import sockets  # noqa: E402
from braas_hpc.core.transport.keeper.client import KeptTransport  # noqa: E402
from tests.testbed import testbed as tb  # noqa: E402

BLOCK = 1 << 20


def no_direct() -> Transport:
    raise SystemExit("the kept transport fell back to a direct connection: nothing kept was measured")


async def one_stream(t: Transport, mib: int) -> float:
    """Seconds to write `mib` MiB and see the command end (all of it read)."""
    block = os.urandom(BLOCK)
    handle = await t.converse(["sh", "-c", "cat >/dev/null; echo done"])
    assert handle.write is not None and handle.write_eof is not None
    try:
        started = time.perf_counter()
        for _ in range(mib):
            await handle.write(block)
        await handle.write_eof()
        lines = [line.text async for line in handle.lines]
        took = time.perf_counter() - started
        if lines != ["done"] or await handle.wait() != 0:
            raise SystemExit(f"the command did not end as expected: {lines}")
        return took
    finally:
        await handle.close()


async def series(t: Transport, mib: int, rounds: int) -> float:
    try:
        await t.connect()
        await one_stream(t, 8)  # warm: the channel and, kept, the keeper's first request
        return statistics.median([mib / await one_stream(t, mib) for _ in range(rounds)])
    finally:
        await t.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="asyncssh,paramiko,openssh")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bkc-", dir="/tmp"))
    os.environ.update(BRAAS_HPC_CONFIG_DIR=str(work / "config"), BRAAS_HPC_DATA_DIR=str(work / "data"),
                      BRAAS_HPC_KEEPER_DIR=str(work / "k"), BRAAS_HPC_KEEPER="on")
    os.environ.pop("SSH_AUTH_SOCK", None)
    bed = tb.up()
    target = SSHTarget(host="127.0.0.1", port=bed.ssh_port, user=bed.user, key_files=(str(bed.key_file),),
                       known_hosts=str(bed.known_hosts), ssh_config="none", use_agent=False)
    rows = []
    try:
        for backend in args.backends.split(","):
            direct = asyncio.run(series(make_transport(backend, target, NoPrompts()), args.mib, args.rounds))
            kept = asyncio.run(series(KeptTransport(backend, target, NoPrompts(), 600, no_direct), args.mib,
                                      args.rounds))
            rows.append({"backend": backend, "direct_mib_s": direct, "kept_mib_s": kept})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        with contextlib.suppress(sockets.KeeperUnavailable):
            asyncio.run(keeper_link.ask_keeper("stop"))
    print(f"\n{args.mib} MiB in 1 MiB blocks into `cat`, MiB/s (median of {args.rounds})\n")
    print("| back end | direct | kept | kept/direct |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['direct_mib_s']:.0f} | {r['kept_mib_s']:.0f} | "
              f"{r['kept_mib_s'] / r['direct_mib_s']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
