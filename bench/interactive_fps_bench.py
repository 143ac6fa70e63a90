"""Frames per second of the built-in Cycles server through the SSH tunnel, against the same server
reached directly (issue 9).

The test cluster's compute node is its own network namespace; the login side (this process) routes to
it, so the same running server is reached two ways in the same session: directly at the node's address,
and through a tunnel that crosses the cluster's sshd (127.0.0.1:2222) to the node, as a user's laptop
would. Blocks of frames alternate between the two so drift (CPU heat, other load) hits both alike. The
view stays still, so every frame is one more Cycles sample of the same cost.

    python3 bench/interactive_fps_bench.py [--frames 30] [--rounds 3] [--backends asyncssh,openssh,paramiko]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from braas_hpc.core.presets import load_preset  # noqa: E402
from braas_hpc.core.transport import transport_for  # noqa: E402
from braas_hpc_interactive.core import session  # noqa: E402
from braas_hpc_interactive.core.client import RenderClient  # noqa: E402
from braas_hpc_interactive.core.protocol import ViewRequest  # noqa: E402
from braas_hpc_interactive.core.tunnel import for_session  # noqa: E402
from tests.helpers import make_sample  # noqa: E402
from tests.integration.test_interactive_render import serve_builtin  # noqa: E402
from tests.testbed import nodens  # noqa: E402
from tests.testbed import testbed as tb  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = ((640, 360), (64, 36))  # the size, and a tiny one where the hop's latency dominates


def view(width: int, height: int) -> ViewRequest:
    rows = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 10.0)
    return ViewRequest(width, height, matrix=rows, lens=2 * math.atan(6.0 / 10.0), clip_start=0.1, clip_end=100.0)


def frame_times(host: str, port: int, token: str, size: tuple[int, int], frames: int) -> list[float]:
    """Seconds per frame at the client, from request to the last byte of the state, after one warm-up."""
    times = []
    with RenderClient(host, port, token, timeout=120) as client:
        client.request(view(*size))
        for _ in range(frames):
            started = time.perf_counter()
            client.request(view(*size))
            times.append(time.perf_counter() - started)
    return times


async def measure(record: session.SessionRecord, conn: object, backends: list[str], frames: int, rounds: int
                  ) -> list[dict[str, object]]:
    results = []
    for backend in backends:
        async with for_session(record.preset, backend, conn.host, conn.port) as tunnel:  # type: ignore[attr-defined]
            for size in SIZES:
                direct: list[float] = []
                tunnelled: list[float] = []
                for _ in range(rounds):
                    direct += await asyncio.to_thread(frame_times, nodens.NODE_ADDR, conn.port, conn.token,  # type: ignore[attr-defined]
                                                      size, frames)
                    tunnelled += await asyncio.to_thread(frame_times, *tunnel.address,  # the private socket
                                                         conn.token, size, frames)  # type: ignore[attr-defined]
                d, t = statistics.median(direct), statistics.median(tunnelled)
                results.append({"backend": backend, "size": f"{size[0]}x{size[1]}", "frames": len(direct),
                                 "fps_direct": round(1 / d, 2), "fps_tunnel": round(1 / t, 2),
                                 "fps_ratio": round(d / t, 3), "added_ms_per_frame": round((t - d) * 1000, 2)})
                print(json.dumps(results[-1]), flush=True)
    return results


async def run(frames: int, rounds: int, backends: list[str], scratch: Path) -> list[dict[str, object]]:
    t = tb.up()
    scene = make_sample(scratch / "scene")
    remote_scene = f"{t.workdir}/fps-bench/sample.blend"
    transport = transport_for(load_preset("testbed"))
    await transport.run(["mkdir", "-p", "--", str(Path(remote_scene).parent)])
    await transport.put(scene, remote_scene)
    record = await session.start("testbed", walltime_min=30, blendfile=remote_scene)
    try:
        await session.wait_ready(record, timeout=240)
        _, conn = await serve_builtin(record)
        return await measure(record, conn, backends, frames, rounds)
    finally:
        await session.stop(record)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30, help="frames per block")
    parser.add_argument("--rounds", type=int, default=3, help="alternating direct/tunnel blocks per size")
    parser.add_argument("--backends", default="asyncssh,openssh,paramiko")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="braas-fps-bench-") as scratch:
        os.environ.setdefault("BRAAS_HPC_DATA_DIR", str(Path(scratch) / "data"))  # sessions of the bench only
        results = asyncio.run(run(args.frames, args.rounds, args.backends.split(","), Path(scratch)))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "interactive_fps.json").write_text(json.dumps(results, indent=1))
    for r in results:
        print(f"{r['backend']:9} {r['size']:8} direct {r['fps_direct']:6.2f} fps | tunnel {r['fps_tunnel']:6.2f} fps"
              f" | ratio {r['fps_ratio']:.3f} | tunnel adds {r['added_ms_per_frame']:6.2f} ms a frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
