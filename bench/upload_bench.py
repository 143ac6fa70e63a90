"""Upload benchmark (issue 6): a scene with many textures through a latency-injecting proxy.

Measures, over a TCP proxy in front of the test cluster's sshd that adds `--delay-ms` each way:
  1. the first upload (`submit --pack dir`) against `scp -r` of the same tree over the same proxy;
  2. a re-submission after one texture changed: bytes sent / bytes changed, and its wall time
     against the first (full) upload;
  3. remote calls per submission (conversations with the submission helper, other commands, separate
     file transfers), for two numbers of files.

    python3 bench/upload_bench.py [--textures 40] [--size 1450] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from braas_hpc.core import service  # noqa: E402
from braas_hpc.core.presets import load_preset  # noqa: E402
from braas_hpc.core.spec import SubmitRequest  # noqa: E402
from braas_hpc.core.transport import pool, transport_for  # noqa: E402
from braas_hpc.core.transport.hostkeys import host_pattern, recorded_keys  # noqa: E402
from tests.testbed import testbed as tb  # noqa: E402
from tests.testbed.tcpproxy import running_proxy  # noqa: E402

HERE = Path(__file__).resolve().parent


class Calls:
    """Counts remote round trips of one transport: commands and file transfers."""

    def __init__(self, transport) -> None:  # noqa: ANN001
        self.commands = 0
        self.files = 0
        self.streams = 0
        self.conversations = 0
        run, put, send, converse = transport.run, transport.put, transport.send_exact, transport.converse

        async def counted_converse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.conversations += 1
            return await converse(*args, **kwargs)

        async def counted_run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.commands += 1
            return await run(*args, **kwargs)

        async def counted_put(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.files += 1
            return await put(*args, **kwargs)

        async def counted_send(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            self.streams += 1
            return await send(*args, **kwargs)

        transport.run, transport.put, transport.send_exact = counted_run, counted_put, counted_send
        transport.converse = counted_converse


def make_scene(out: Path, textures: int, size: int) -> Path:
    subprocess.run([sys.executable, str(HERE / "make_texture_scene.py"), str(out), "--textures", str(textures),
                    "--size", str(size)], check=True, capture_output=True)
    return out / "scene.blend"


def write_preset(config: Path, t: tb.Testbed, port: int, workdir: str) -> None:
    (key_type, blob), *_ = recorded_keys(Path(t.known_hosts), "127.0.0.1", t.ssh_port)
    known = config / "known_hosts"
    config.mkdir(parents=True, exist_ok=True)
    known.write_text(f"{host_pattern('127.0.0.1', port)} {key_type} {base64.b64encode(blob).decode()}\n")
    (config / "presets").mkdir(parents=True, exist_ok=True)
    (config / "presets" / "slow.toml").write_text(
        f'name = "slow"\nscheduler = "slurm"\nhost = "127.0.0.1"\nport = {port}\nuser = "{t.user}"\n'
        f'key_file = "{t.key_file}"\nknown_hosts = "{known}"\nssh_config = "none"\nworkdir = "{workdir}"\n'
        f'account = "braas"\npartition_cpu = "qcpu"\npartition_gpu = "qgpu"\n')


async def submit(scene: Path) -> tuple[float, int, Calls]:
    transport = transport_for(load_preset("slow"))
    await transport.connect()  # the SSH handshake is not part of an upload
    calls = Calls(transport)
    started = time.perf_counter()
    result = await service.submit(SubmitRequest(scene=scene, preset="slow", frames="1", pack="dir"))
    seconds = time.perf_counter() - started
    await transport.run(["scancel", *result.scheduler_ids])
    await pool.close_all()
    return seconds, result.upload.uploaded_bytes, calls


def scp_tree(t: tb.Testbed, port: int, known: Path, tree: Path, remote: str) -> float:
    started = time.perf_counter()
    subprocess.run(["scp", "-q", "-r", "-P", str(port), "-i", str(t.key_file), "-o", f"UserKnownHostsFile={known}",
                    "-o", "StrictHostKeyChecking=yes", "-F", "none", str(tree), f"{t.user}@127.0.0.1:{remote}"],
                   check=True)
    return time.perf_counter() - started


def tree_bytes(tree: Path) -> int:
    return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--textures", type=int, default=40)
    parser.add_argument("--size", type=int, default=1450)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    t = tb.up()
    with tempfile.TemporaryDirectory(prefix="braas-bench-") as temp, \
            running_proxy("127.0.0.1", t.ssh_port, delay_ms=args.delay_ms) as proxy:
        root = Path(temp)
        os.environ["BRAAS_HPC_CONFIG_DIR"] = str(root / "config")
        os.environ["BRAAS_HPC_DATA_DIR"] = str(root / "data")
        workdir = f"{t.workdir}/bench-{secrets.token_hex(4)}"
        write_preset(root / "config", t, proxy.port, workdir)
        scene = make_scene(root / "project", args.textures, args.size)
        total = tree_bytes(scene.parent)
        scp_s = scp_tree(t, proxy.port, root / "config" / "known_hosts", scene.parent, f"{t.workdir}/scp-copy")
        first_s, first_bytes, first_calls = asyncio.run(submit(scene))
        # Change one texture: new noise, same size.
        changed = scene.parent / "textures" / "noise_07.png"
        size = changed.stat().st_size
        repaint = (f"import bpy, numpy as np; i = bpy.data.images.load({str(changed)!r}); "
                   "i.pixels.foreach_set(np.random.default_rng(999).random(len(i.pixels), dtype=np.float32)); "
                   "i.save()")
        subprocess.run([sys.executable, "-c", repaint], check=True, capture_output=True)
        second_s, second_bytes, second_calls = asyncio.run(submit(scene))
        small = make_scene(root / "small", 5, 256)
        _, _, small_calls = asyncio.run(submit(small))
        cleanup = ["rm", "-rf", workdir, f"{t.workdir}/scp-copy"]
        subprocess.run(tb.ssh_command(tb.Layout.from_env(), " ".join(cleanup)), check=True)
    rtt = 2 * args.delay_ms
    print(f"scene: {args.textures} textures, {total / 1e6:.0f} MB; proxy round trip {rtt:.0f} ms")
    print("| measure | value |\n|---|---|")
    print(f"| first upload (submit --pack dir) | {first_s:.1f} s, {first_bytes / 1e6:.0f} MB |")
    print(f"| scp -r of the same tree, same proxy | {scp_s:.1f} s |")
    print(f"| first upload / scp -r (time) | {first_s / scp_s:.2f} |")
    print(f"| re-submission, one texture changed ({size / 1e6:.1f} MB) | {second_s:.1f} s, "
          f"{second_bytes / 1e6:.2f} MB sent |")
    print(f"| bytes sent / bytes changed | {second_bytes / size:.3f} (fixed cost {second_bytes - size} bytes) |")
    print(f"| re-submission / full upload (time) | {second_s / first_s:.2f} |")
    print(f"| conversations with the submission helper + other remote commands, {args.textures} textures | "
          f"{first_calls.conversations} + {first_calls.commands} first, {second_calls.conversations} + "
          f"{second_calls.commands} re-submission |")
    print(f"| the same, 5 textures | {small_calls.conversations} + {small_calls.commands} |")
    print(f"| file uploads and data streams outside the conversation | {first_calls.files + first_calls.streams} "
          f"first, {second_calls.files + second_calls.streams} re-submission |")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
