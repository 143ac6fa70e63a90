"""What a preset or a connection may name as a host: the check shared by preset validation and known_hosts."""

from __future__ import annotations

import re

# A name, an IPv4 or IPv6 address, or an ssh_config alias. Nothing that known_hosts reads as syntax:
# `*` `?` `!` `,` would make the recorded line a pattern (`*` trusts every host), whitespace or a
# newline would split it, `[` `|` `@` `#` start other kinds of entries; a leading '-' reads as an option.
_HOST_NAME = re.compile(r"[A-Za-z0-9_:][A-Za-z0-9_.:-]{0,253}\Z")


def valid_host_name(host: str) -> bool:
    return _HOST_NAME.match(host) is not None
