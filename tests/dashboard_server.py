"""The dashboard served in a thread of the test process (its own event loop, as `braas-hpc dashboard`
runs it), so a test can count what it asks the clusters; and Debian's chromium for playwright."""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from braas_hpc.core.transport import pool
from braas_hpc.dashboard import app

CHROMIUM = Path("/usr/bin/chromium")


def ensure_chromium() -> str:
    """Debian's chromium, installed with apt when missing (playwright downloads no browser here)."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise RuntimeError("the dashboard's browser tests need Debian's chromium: apt-get install chromium")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env, check=True,
                       capture_output=True, timeout=1800)
    return str(CHROMIUM)


def get(port: int, path: str, host: str | None = None, method: str = "GET",
        headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True)
    conn.putheader("Host", f"127.0.0.1:{port}" if host is None else host)
    for key, value in (headers or {}).items():
        conn.putheader(key, value)
    conn.endheaders()
    response = conn.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


@contextmanager
def serving(dest: Path, poll_max_s: float | None = None) -> Iterator[app.Dashboard]:
    board = app.make(0, dest, poll_max_s)

    async def main() -> None:
        try:
            await board.serve()
        finally:
            await pool.close_all()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not board.server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("the dashboard did not start")
        time.sleep(0.05)
    try:
        yield board
    finally:
        board.stop()
        thread.join(15)
