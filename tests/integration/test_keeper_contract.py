"""The transport contract (tests/integration/test_transport_contract.py) through the connection keeper:
the same tests, for each back end, with every primitive a request to a keeper process that owns the real
connection. The transport these tests get can never fall back to a direct connection (that fails the
test), so each one proves the kept path: commands, streams and their cancel, transfers resumed over cut
connections, typed host-key and login refusals, passphrases and one-time codes relayed, forwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from braas_hpc.core.transport import NoPrompts, SSHTarget, Transport
from braas_hpc.core.transport.keeper.client import KeptTransport
from tests.integration.conftest import no_direct
from tests.integration.test_transport_contract import (  # noqa: F401 - collected here too, on a kept transport
    _use,
    backend,
    client,
    main_target,
    test_a_missing_known_hosts_file_trusts_no_host,
    test_arguments_reach_the_command_verbatim,
    test_changed_host_key_is_refused,
    test_commands_reuse_one_connection,
    test_converse_streams_input_held_back_by_flow_control,
    test_converse_to_a_command_that_stops_reading,
    test_download_survives_a_dropped_connection,
    test_encrypted_key_asks_once,
    test_failure_is_a_typed_error_with_the_stderr_tail,
    test_forward_reaches_what_only_the_server_can_reach,
    test_key_types,
    test_next_call_reconnects_after_a_drop,
    test_put_get_with_awkward_names,
    test_revoked_host_key_is_refused,
    test_stream_lines_arrive_live_and_cancel_ends_the_process,
    test_totp_is_asked_once_per_connection,
    test_trees_round_trip,
    test_unknown_host_key_carries_the_fingerprint,
    test_upload_survives_dropped_connections,
    test_wrong_passphrase_fails_cleanly,
)

pytestmark = pytest.mark.testbed
KEEP_S = 600.0


@pytest.fixture
def connect(backend: str, keeper: Path) -> Iterator[Callable[..., Transport]]:  # noqa: F811 - the fixture above
    def make(target: SSHTarget, prompts: Any = None) -> Transport:
        return KeptTransport(backend, target, prompts or NoPrompts(), KEEP_S, no_direct)

    make.backend = backend  # type: ignore[attr-defined]
    yield make


def test_new_files_come_in_one_stream_through_the_keeper(connect, main_target, tmp_path: Path, testbed) -> None:  # noqa: ANN001, F811
    """A batch download through the keeper: the keeper streams every file through its connection's kept
    shell and writes it here whole; each file's progress reaches this command; a missing one is left."""
    remote_dir = f"{testbed.workdir}/kept batch {secrets.token_hex(6)}"
    names = ["frame_0001.png", "-dash $(x) ü.png", "empty.png"]
    data = {names[0]: os.urandom(2 * 1024 * 1024 + 5), names[1]: os.urandom(70_001), names[2]: b""}
    (tmp_path / "up").mkdir()
    for name, content in data.items():
        (tmp_path / "up" / name).write_bytes(content)
    seen: dict[str, tuple[int, int]] = {}

    def progress(remote: str) -> Any:
        return lambda done, total: seen.__setitem__(remote.rsplit("/", 1)[1], (done, total))

    async def work(t: Transport) -> set[str]:
        await t.run(["mkdir", "-p", remote_dir])
        for name in names:
            await t.put(tmp_path / "up" / name, f"{remote_dir}/{name}")
        items = [(f"{remote_dir}/{n}", tmp_path / "down" / n) for n in [*names, "missing.png"]]
        done = await t.get_batch(items, progress)
        await t.run(["rm", "-rf", remote_dir])
        return done

    transport = connect(main_target)
    done = asyncio.run(_use(transport, work))
    assert isinstance(transport, KeptTransport) and transport._direct is None
    assert done == {f"{remote_dir}/{n}" for n in names}
    assert {p.name: p.read_bytes() for p in (tmp_path / "down").iterdir()} == data  # no temp file left
    assert seen[names[0]] == (len(data[names[0]]),) * 2 and seen[names[1]] == (70_001, 70_001)
