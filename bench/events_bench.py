"""How soon `wait` knows: a 12-frame job on the test cluster, from its last frame landing to `wait` returning,
with the cluster's job watcher off (polls on the back-off alone) and on (core.events).

Each run submits the sample scene (`braas-hpc submit --frames 1-12`), then runs `braas-hpc wait` at once, both
as real CLI processes with the default back-off. The times of the last frame and of summary.json are their
modification times on the cluster (the test cluster runs on this machine: one clock). sacct and squeue are
wrapped while the bench runs to count the calls naming each job (one sacct per status poll).

    python3 bench/events_bench.py [--runs 2] [--frames 12] [--max-parallel N]

`--max-parallel 1` renders the frames one task after the other, `--samples N` makes each slower: a longer
job, whose polls have backed off further by the time it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import make_sample  # noqa: E402
from tests.testbed import testbed as tb  # noqa: E402

COUNTING = """#!/bin/sh
# events_bench: the real {tool}, every call logged.
printf '%s\\n' "{tool} $*" >> {log}
exec /usr/bin/{tool} "$@"
"""


def cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "braas_hpc.cli", *argv], capture_output=True, text=True,
                          timeout=1800, env=env, cwd=Path(__file__).resolve().parents[1])


def remote(layout: tb.Layout, command: str) -> str:
    return subprocess.run(tb.ssh_command(layout, command), capture_output=True, text=True, timeout=120).stdout


def one_run(layout: tb.Layout, scene: Path, frames: int, events: bool, log: str, extra: list[str]
            ) -> dict[str, float | str | bool]:
    env = {**os.environ, "BRAAS_HPC_EVENTS": "on" if events else "off"}
    submitted = time.time()
    done = cli(env, "submit", str(scene), "--preset", "testbed", "--frames", f"1-{frames}", "--json",
               *extra)
    if done.returncode:
        raise SystemExit(done.stderr)
    job = json.loads(done.stdout)
    waited = cli(env, "wait", job["job"], "--json")
    returned = time.time()
    if waited.returncode:
        raise SystemExit(waited.stdout + waited.stderr)
    stamps = remote(layout, f"for i in $(seq 60); do [ -s {job['job_dir']}/summary.json ] && break; sleep 0.5; done; "
                            f"find {job['job_dir']}/out {job['job_dir']}/summary.json -maxdepth 1 -type f "
                            "-printf '%T@ %f\\n'").splitlines()
    times = {name: float(stamp) for stamp, name in (line.split(" ", 1) for line in stamps)}
    last_frame = max(t for name, t in times.items() if name.startswith("frame_"))
    calls = remote(layout, f"cat {log}")
    count = {tool: sum(1 for line in calls.splitlines() if line.startswith(tool + " ")
                       and re.search(rf"(?<![0-9]){job['scheduler_ids'][0]}(?![0-9])", line))
             for tool in ("sacct", "squeue")}
    return {"events": events, "job": job["job"], "last_frame_s": last_frame - submitted,
            "summary_s": times.get("summary.json", float("nan")) - submitted, "wait_s": returned - submitted,
            "after_last_frame_s": returned - last_frame, "sacct": count["sacct"], "squeue": count["squeue"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--max-parallel", type=int, default=0, help="the job's array throttle (0: none)")
    parser.add_argument("--samples", type=int, default=0, help="Cycles samples (0: the scene's)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="beb-", dir="/tmp"))
    os.environ.update(BRAAS_HPC_CONFIG_DIR=str(work / "config"), BRAAS_HPC_DATA_DIR=str(work / "data"),
                      BRAAS_HPC_KEEPER="off")
    tb.up()
    layout = tb.Layout.from_env()
    scene = make_sample(work / "sample")
    log = f"/tmp/braas-events-bench-{secrets.token_hex(4)}.log"
    wrappers = [layout.bin / tool for tool in ("sacct", "squeue")]
    if any(w.exists() for w in wrappers):
        raise SystemExit("sacct or squeue is wrapped by someone else right now")
    for wrapper in wrappers:
        wrapper.write_text(COUNTING.format(tool=wrapper.name, log=log))
        wrapper.chmod(0o755)
    extra = [*(["--max-parallel", str(args.max_parallel)] if args.max_parallel else []),
             *(["--samples", str(args.samples)] if args.samples else [])]
    rows = []
    try:
        for _ in range(args.runs):
            for events in (False, True):
                row = one_run(layout, scene, args.frames, events, log, extra)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        for wrapper in wrappers:
            wrapper.unlink()
        remote(layout, f"rm -f {log}")
    settings = " ".join(extra) or "the scene's settings"
    print(f"\n{args.frames}-frame job ({settings}), seconds from submit; "
          f"medians of {args.runs} runs\n")
    print("| watcher | last frame landed | summary written | `wait` returned | last frame to `wait` "
          "| sacct / squeue calls |")
    print("|---|---|---|---|---|---|")
    for events in (False, True):
        mine = [r for r in rows if r["events"] is events]

        def med(key: str, mine: list = mine) -> float:
            return statistics.median(float(r[key]) for r in mine)
        print(f"| {'on' if events else 'off'} | {med('last_frame_s'):.1f} | {med('summary_s'):.1f} | "
              f"{med('wait_s'):.1f} | {med('after_last_frame_s'):.1f} | {med('sacct'):.0f} / {med('squeue'):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
