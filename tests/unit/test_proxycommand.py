"""A ProxyCommand for the Python back ends: run by the shell as OpenSSH runs it, its link a socket, ended
with the connection even when it ignores end of file."""

from __future__ import annotations

import os
import time

import pytest

from braas_hpc.core.errors import ConnectionFailed
from braas_hpc.core.transport.proxycommand import Proxy

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the socket pair is the POSIX path")


def test_shell_features_and_the_link_both_ways() -> None:
    proxy = Proxy("${BRAAS_NOT_SET:-cat} 2>/dev/null | head -c 3")
    try:
        proxy.sock.settimeout(5)
        proxy.sock.sendall(b"hello\n")
        assert proxy.sock.recv(100) == b"hel"
    finally:
        proxy.end()


def test_end_stops_a_command_that_ignores_end_of_file() -> None:
    proxy = Proxy("sleep 30")  # reads no input, so an end of file alone would not stop it
    proxy.end()
    deadline = time.monotonic() + 5
    while proxy.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.process.poll() is not None


def test_a_shell_that_cannot_start_is_a_connection_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELL", "/nonexistent/shell")
    with pytest.raises(ConnectionFailed, match="cannot start ProxyCommand 'nc h 22'"):
        Proxy("nc h 22")
