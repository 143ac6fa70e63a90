"""Questions from the loop thread to the user, answered on Blender's main thread (no bpy here).

The SSH back ends ask for a key passphrase or a one-time code from a worker thread and may block; the
broker queues the question and waits. The main thread's timer takes it, shows a popup, and answers.
Answers pass through memory only and are dropped once handed over. In background mode nobody can
answer, so the broker says "no answer" at once and authentication fails with a clear error.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

ANSWER_TIMEOUT_S = 600.0  # a question left open this long is taken as refused


@dataclass
class Question:
    kind: str  # "passphrase" or "kbdint"
    title: str
    instructions: str
    fields: list[tuple[str, bool]]  # (prompt, shown as typed); a one-time code is not shown
    _answered: threading.Event = field(default_factory=threading.Event, repr=False)
    _answers: list[str] | None = field(default=None, repr=False)

    def answer(self, answers: list[str] | None) -> None:
        self._answers = answers
        self._answered.set()

    def wait(self, timeout: float) -> list[str] | None:
        self._answered.wait(timeout)
        answers, self._answers = self._answers, None  # keep no copy of a secret
        return answers


class PromptBroker:
    """The add-on's `Prompts` for the transports."""

    def __init__(self, interactive: Callable[[], bool]) -> None:
        self._interactive = interactive
        self._questions: queue.Queue[Question] = queue.Queue()
        self._one_at_a_time = threading.Lock()

    def passphrase(self, key_file: str) -> str | None:
        answers = self._ask(Question("passphrase", f"Passphrase for {key_file}", "", [("Passphrase", False)]))
        return answers[0] if answers else None

    def kbdint(self, name: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str] | None:
        if not prompts:
            return []
        return self._ask(Question("kbdint", name or "The cluster asks", instructions, list(prompts)))

    def _ask(self, question: Question) -> list[str] | None:
        if not self._interactive():
            return None
        with self._one_at_a_time:
            self._questions.put(question)
            return question.wait(ANSWER_TIMEOUT_S)

    def next_question(self) -> Question | None:
        """For the main thread: the question waiting for the user, if any."""
        try:
            return self._questions.get_nowait()
        except queue.Empty:
            return None

    def refuse_all(self) -> None:
        """Unregister: nobody will answer, so nothing may wait."""
        while (question := self.next_question()) is not None:
            question.answer(None)
