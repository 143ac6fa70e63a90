"""CLI prompts: passphrases from the OS keyring when enabled, one-time codes never kept."""

from __future__ import annotations

from braas_hpc.prompts import KEYRING_SERVICE, TerminalPrompts
from tests.helpers import MemoryKeyring


def test_passphrase_is_kept_in_the_keyring_and_replaced_when_wrong() -> None:
    store = MemoryKeyring()
    typed = iter(["first", "second"])
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return next(typed)

    prompts = TerminalPrompts(ask_secret=ask, interactive=True, keyring=store)
    assert prompts.passphrase("/k") == "first" and len(asked) == 1
    assert store.items == {(KEYRING_SERVICE, "passphrase:/k"): "first"}

    later = TerminalPrompts(ask_secret=ask, interactive=True, keyring=store)  # a new process
    assert later.passphrase("/k") == "first" and len(asked) == 1  # from the keyring, not asked
    assert later.passphrase("/k") == "second" and len(asked) == 2  # asked again: it was wrong
    assert store.items == {(KEYRING_SERVICE, "passphrase:/k"): "second"}


def test_codes_are_never_kept_and_scripts_are_never_asked() -> None:
    store = MemoryKeyring()
    prompts = TerminalPrompts(ask_secret=lambda _p: "123456", interactive=True, keyring=store)
    assert prompts.kbdint("", "", [("Code: ", False)]) == ["123456"]
    assert store.items == {}
    silent = TerminalPrompts(ask_secret=lambda _p: "x", interactive=False, keyring=None)
    assert silent.passphrase("/k") is None and silent.kbdint("", "", [("Code: ", False)]) is None
    assert silent.confirm("Trust?") is False
