"""The transport contract (tests/integration/test_transport_contract.py) through the connection keeper:
the same tests, for each back end, with every primitive a request to a keeper process that owns the real
connection. The transport these tests get can never fall back to a direct connection (that fails the
test), so each one proves the kept path: commands, streams and their cancel, transfers resumed over cut
connections, typed host-key and login refusals, passphrases and one-time codes relayed, forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from braas_hpc.core.transport import NoPrompts, SSHTarget, Transport
from braas_hpc.core.transport.keeper.client import KeptTransport
from tests.integration.conftest import no_direct
from tests.integration.test_transport_contract import (  # noqa: F401 - collected here too, on a kept transport
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
