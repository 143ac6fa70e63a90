"""braas_hpc_interactive: interactive jobs, tunnels and a remote Cycles viewport (a later issue).

A placeholder extension for now: it registers nothing.
"""

from __future__ import annotations


def register() -> None:
    return None


def unregister() -> None:
    return None
