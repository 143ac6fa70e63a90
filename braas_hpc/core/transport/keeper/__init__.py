"""The connection keeper: one live SSH connection per cluster shared by consecutive commands.

A small process of the user's own, started on first use and ending after the preset's idle time, owns the
real transports (`server.py`; each client connection's request in `handling.py`). Commands reach it
through a private Unix socket (`sockets.py`, the one module that knows the socket; `wire.py`, what travels
on it; `link.py`, a command's side of it) and see it as an ordinary transport (`client.py`; a stream,
its input included, in `stream.py`). Logins, and the one-time codes they ask, happen once per kept
connection instead of once per command.
"""
