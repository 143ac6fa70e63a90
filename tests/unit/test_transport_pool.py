"""The transport pool shares a connection only between presets that would open the same one: same place,
same login, same host-key trust."""

from __future__ import annotations

import asyncio
import dataclasses

from braas_hpc.core.presets import Preset
from braas_hpc.core.transport import TransportPool

SITE = Preset(name="a", scheduler="slurm", host="login.example.org", user="me", blender="blender")


def _pair(**other: object) -> tuple[object, object]:
    async def both() -> tuple[object, object]:
        pool = TransportPool()
        return pool.get(SITE), pool.get(dataclasses.replace(SITE, name="b", **other))
    return asyncio.run(both())


def test_two_presets_of_one_login_share_a_connection() -> None:
    first, second = _pair()
    assert first is second


def test_a_preset_with_other_trust_or_keys_never_rides_another_ones_connection() -> None:
    for change in ({"known_hosts": "/elsewhere/known_hosts"}, {"key_file": "/keys/other"},
                   {"ssh_config": "none"}, {"port": 2222}, {"user": "you"}, {"proxy_jump": "gw.example.org"}):
        first, second = _pair(**change)
        assert first is not second, change
