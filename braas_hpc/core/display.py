"""Text that others wrote (a cluster's logs and file names, a server's prompts, error messages quoting
them), made safe to show on a terminal.

An escape sequence in such text could move the cursor, rewrite what is already on screen, retitle the
window or hide the lines that follow, so every control character except newline and tab is shown as a
visible `\\xNN` instead. Bidirectional overrides go too: they make text read differently than it is.
"""

from __future__ import annotations

import re

# C0 controls but \t and \n, DEL, C1 controls, and the Unicode bidirectional embeddings/overrides/isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def plain(text: str) -> str:
    """`text` with nothing a terminal would act on: Windows line ends become newlines, every other control
    character becomes its visible escape (`\\x1b`, `\\u202e`)."""
    return _UNSAFE.sub(_visible, text.replace("\r\n", "\n"))


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
