"""SSH_ASKPASS helper for the OpenSSH back end: passes ssh's question to the transport that started ssh.

OpenSSH runs this program (through a small wrapper script) with the prompt as its only argument
and reads the answer from its stdout. We forward the prompt over the unix socket named in
$BRAAS_ASKPASS_SOCKET, which the transport serves while it connects, and print what comes back.
The answer exists only in memory and on that socket: never in a file, the environment or argv.

Standard library only, no package imports: it runs as `python -I -S askpass.py PROMPT`, so it works
wherever the interpreter does, whatever sys.path the parent had.
"""

from __future__ import annotations

import json
import os
import socket
import sys

SOCKET_ENV = "BRAAS_ASKPASS_SOCKET"
MAX_REPLY = 1 << 16


def ask(socket_path: str, prompt: str, kind: str) -> str | None:
    """Send one question to the transport; its answer, or None when the user gave none."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(socket_path)
        conn.sendall(json.dumps({"prompt": prompt, "kind": kind}).encode())
        conn.shutdown(socket.SHUT_WR)  # end of request: the server reads to EOF
        reply = bytearray()
        while chunk := conn.recv(4096):
            reply += chunk
            if len(reply) > MAX_REPLY:
                return None
    answer = json.loads(reply or b"{}").get("answer")
    return answer if isinstance(answer, str) else None


def main(argv: list[str]) -> int:
    kind = os.environ.get("SSH_ASKPASS_PROMPT", "")
    if kind == "none":
        return 0  # a notice ("touch your security key"); ssh ends us itself, nothing to answer
    socket_path = os.environ.get(SOCKET_ENV)
    if not socket_path:
        return 1
    try:
        answer = ask(socket_path, argv[1] if len(argv) > 1 else "", kind)
    except (OSError, ValueError):
        return 1  # no transport listening: ssh takes it as "no answer"
    if answer is None:
        return 1
    sys.stdout.write(answer + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
