"""ProxyCommand run as OpenSSH runs it, for the Python back ends: through the user's shell, its stdin and
stdout our link to the server, its stderr left where OpenSSH leaves it (ours).

A socket pair rather than pipes: both back ends then get a real socket (asyncssh's own proxy_command
takes a stderr the command redirects, `2>/dev/null`, for a lost connection), and closing our end is an
end of file the command sees. The command is ended when the connection closes.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import threading

from ..errors import ConnectionFailed


def proxy_argv(command: str) -> list[str]:
    """OpenSSH runs a ProxyCommand with `$SHELL -c "exec ..."`: pipes, redirections and variables work."""
    if os.name != "posix":
        return shlex.split(command)
    return [os.environ.get("SHELL") or "/bin/sh", "-c", f"exec {command}"]


class Proxy:
    """A running ProxyCommand and our end of its link."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.sock, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(proxy_argv(command), stdin=theirs, stdout=theirs, start_new_session=True)
        except OSError as exc:
            self.sock.close()
            raise ConnectionFailed(f"cannot start ProxyCommand {command!r}: {exc.strerror or exc}") from exc
        finally:
            theirs.close()
        threading.Thread(target=self.process.wait, name="proxycommand-reaper", daemon=True).start()

    def end(self) -> None:
        """Close the link and end the command (one that ignores end of file too)."""
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.terminate()

    close = end  # for the back ends' close-everything helpers
