"""The connection keeper: one live SSH connection per cluster shared by consecutive commands.

A small process of the user's own (`server.py`), started on first use and ending after the preset's idle
time, owns the real transports; commands reach it through a private Unix socket (`sockets.py`, the one
place that knows the socket) and see it as an ordinary transport (`client.py`). Logins, and the one-time
codes they ask, happen once per kept connection instead of once per command.
"""
