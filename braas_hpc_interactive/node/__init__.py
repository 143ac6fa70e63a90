"""Files that run on the compute node, inside the user's Blender: the built-in render server and the
wire rules it shares with the client. They are installed together, in one directory."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
SERVER_FILES = (_HERE / "render_server.py", _HERE.parent / "core" / "protocol.py")
