"""The CLI's host-key questions (tests/integration/test_cli_trust.py) with the connection keeper on, for each
back end: an unknown key is shown with its fingerprint and recorded only on yes, then the same keeper
connects (it reads known_hosts again at each login); a changed key is refused even on yes. That the keeper
was used is checked after each test (its socket exists)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from braas_hpc.core.transport.keeper import sockets
from tests.integration.test_cli_trust import (  # noqa: F401 - collected here too, with the keeper on
    backend,
    server_key,
    test_changed_host_key_is_refused_even_on_yes,
    test_unknown_host_in_a_script_is_refused_with_its_fingerprint,
    test_unknown_host_is_recorded_on_yes_only,
    untrusted,
)

pytestmark = pytest.mark.testbed


@pytest.fixture(autouse=True)
def kept(keeper: Path) -> Iterator[None]:
    yield
    assert (keeper / sockets.SOCKET_NAME).exists(), "the keeper was not used"
