"""Main-thread stalls while the add-on uploads (issue 5): Blender's UI must stay responsive.

The add-on's loop thread (braas_hpc.addon_kit.bridge, the same code Blender runs) uploads a file to the
test cluster while this process's main thread does what Blender's timer does: wake every 10 ms, take
finished operations and copy a progress snapshot. Each tick records how late it woke up; the longest
lateness is the longest stall the upload inflicts on Blender's main thread (Python's GIL is shared).
The baseline is the same loop, in the same process, with the bridge idle.

    python3 bench/ui_stall_bench.py [--size-mb 300] [--backends asyncssh,paramiko,openssh]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from braas_hpc.addon_kit.bridge import Bridge, Operation  # noqa: E402
from braas_hpc.core import progress  # noqa: E402
from braas_hpc.core.transport import SSHTarget, make_transport  # noqa: E402
from tests.testbed import testbed as tb  # noqa: E402

TICK_S = 0.010
RESULTS = Path(__file__).resolve().parent / "results"


def ticks_while(bridge: Bridge, busy: Operation | None, seconds: float) -> list[float]:
    """Lateness of each timer tick (ms) until `busy` ends, or for `seconds` when there is none."""
    late = []
    end = time.perf_counter() + seconds
    while (busy is not None and not busy.finished) or (busy is None and time.perf_counter() < end):
        before = time.perf_counter()
        time.sleep(TICK_S)
        woke = time.perf_counter()
        bridge.take_finished()  # what the pump does each tick
        for operation in bridge.active():
            operation.snapshot()
        late.append((woke - before - TICK_S) * 1000 + (time.perf_counter() - woke) * 1000)
    return late


def summary(late: list[float]) -> dict[str, float]:
    ordered = sorted(late)
    return {"ticks": len(late), "max_ms": ordered[-1], "p99_ms": ordered[int(len(ordered) * 0.99) - 1],
            "median_ms": statistics.median(ordered)}


def measure(backend: str, t: tb.Testbed, local: Path, remote: str) -> dict[str, object]:
    target = SSHTarget(host="127.0.0.1", port=t.ssh_port, user=t.user, key_files=(str(t.key_file),),
                       known_hosts=str(t.known_hosts), ssh_config="none", use_agent=False)
    bridge = Bridge()
    try:
        transport_holder: dict[str, object] = {}

        async def connect() -> None:
            transport = make_transport(backend, target)
            await transport.connect()
            transport_holder["t"] = transport

        bridge.run("connect", connect).result(60)
        transport = transport_holder["t"]

        async def upload() -> None:
            await transport.put(local, remote, lambda done, total: progress.report("uploading", done, total))

        idle = ticks_while(bridge, None, 5.0)
        started = time.perf_counter()
        operation = bridge.run("upload", upload)
        busy = ticks_while(bridge, operation, 0)
        operation.result(600)
        seconds = time.perf_counter() - started

        async def close() -> None:
            await transport.close()

        bridge.run("close", close).result(30)
    finally:
        bridge.stop()
    during, before = summary(busy), summary(idle)
    return {"backend": backend, "upload_s": round(seconds, 2), "idle": before, "upload": during,
            "max_ratio_to_idle": round(during["max_ms"] / max(before["max_ms"], 0.01), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--backends", default="asyncssh,paramiko,openssh")
    args = parser.parse_args()
    t = tb.up()
    local = Path("/var/tmp/braas-stall-bench.bin")
    if not local.is_file() or local.stat().st_size != args.size_mb * 1024 * 1024:
        with local.open("wb") as stream:
            for _ in range(args.size_mb):
                stream.write(os.urandom(1024 * 1024))
    remote = f"{t.workdir}/stall-bench.bin"
    results = [measure(b, t, local, remote) for b in args.backends.split(",")]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ui_stall.json").write_text(json.dumps(results, indent=1))
    for r in results:
        idle, up = r["idle"], r["upload"]
        print(f"{r['backend']:9} upload {r['upload_s']:6.2f} s | main-thread lateness idle max {idle['max_ms']:5.1f} "
              f"ms p99 {idle['p99_ms']:4.1f} | during upload max {up['max_ms']:5.1f} ms p99 {up['p99_ms']:4.1f} "
              f"median {up['median_ms']:4.2f} ({up['ticks']} ticks) | max ratio {r['max_ratio_to_idle']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
