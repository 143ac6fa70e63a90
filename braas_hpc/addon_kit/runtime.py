"""The main thread's side of one add-on: start operations on its loop, pump their results back, ask questions.

One timer (`pump`) runs on Blender's main thread while the add-on is enabled: it hands finished
operations to their callbacks, shows the next question from the SSH layer as a popup (for the add-on
that owns the login popups), runs the add-on's periodic tasks, redraws its panels and returns its next
delay: fast while the add-on says so (a live viewport), 10 Hz while work goes on, else once a second.
It only copies small results; the longest it can hold the main thread is what a callback does with
them, never network or disk work.

In background mode (`blender -b`, scripts) there is no event loop to pump, so `launch` waits for the
operation and reports its outcome the way any Blender operator does. `force_ui` selects the UI branch
there too: the bpy module is always in background mode, and the tests of the UI branch drive its timer
themselves.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import bpy

from ..core.errors import BraasError, HostKeyUnknown
from ..core.transport import pool
from ..core.transport.base import NoPrompts
from .bridge import Bridge, Operation
from .prompting import PromptBroker, Question

FAST_INTERVAL_S = 1 / 30
BUSY_INTERVAL_S = 0.1
IDLE_INTERVAL_S = 1.0
# While an idle-kind operation runs (the jobs follower): its reports are applied within this; the panels
# are still redrawn only when a periodic task changed something, or once an IDLE_INTERVAL_S.
WATCHING_INTERVAL_S = 0.25


@dataclass
class Message:
    text: str = ""
    level: str = "INFO"  # INFO, WARNING, ERROR
    at: float = 0.0


@dataclass
class State:
    bridge: Bridge = field(default_factory=Bridge)
    broker: PromptBroker | None = None  # the login questions, for the add-on that shows their popups
    message: Message = field(default_factory=Message)
    question: Question | None = None  # shown by the prompt popup, answered there
    host_key: tuple[HostKeyUnknown, Callable[[], None]] | None = None  # waiting for the trust popup
    # Run by the pump (jobs refresh); a task returns True when it changed what the panels show.
    periodic: list[Callable[[], bool | None]] = field(default_factory=list)


def _nothing() -> None:
    return None


def tag_redraw(area_types: tuple[str, ...], region: str = "") -> None:
    """Redraw every area of these types (or only their `region`, e.g. a sidebar) in every window."""
    window_manager = bpy.context.window_manager
    for window in window_manager.windows if window_manager else ():
        for area in window.screen.areas:
            if area.type not in area_types:
                continue
            if not region:
                area.tag_redraw()
                continue
            for candidate in area.regions:
                if candidate.type == region:
                    candidate.tag_redraw()


class Runtime:
    """One add-on's loop, message line and timer. Parametrised where the add-ons differ:
    `name` prefixes its console lines; `operators` is its `bpy.ops` namespace (popups, Abort);
    `prompts` makes it the transports' passphrase and one-time-code asker; `explain` adds its own words
    to an error (None: the common wording); `redraw` tags what it draws, once per tick; `fast` asks for
    the fast tick; `lasting` names operation kinds that run for long (following output): not busy work,
    and Abort leaves them alone; `idle` names operation kinds that are not busy work either (they run as
    long as something is followed): the timer then looks for their reports at WATCHING_INTERVAL_S and
    redraws only when there was one; `bridge`: its loop, when bpy-free code of the add-on needs it too."""

    def __init__(self, name: str, operators: str, *, prompts: bool = False,
                 explain: Callable[[BaseException], str | None] = lambda _error: None,
                 redraw: Callable[[], None] = _nothing, fast: Callable[[], bool] = lambda: False,
                 lasting: tuple[str, ...] = (), idle: tuple[str, ...] = (), bridge: Bridge | None = None) -> None:
        self.name = name
        self.operators = operators
        self.force_ui = False  # True: the UI branch even in background mode (whoever sets it runs the timers)
        self.explain, self.redraw, self.fast, self.lasting, self.idle = explain, redraw, fast, lasting, idle
        broker = PromptBroker(lambda: not self.background()) if prompts else None
        self.state = State(bridge=bridge or Bridge(), broker=broker)
        self.timer = self.pump  # one bound method, kept: bpy.app.timers knows a timer by its object
        self._redrawn_at = 0.0

    def background(self) -> bool:
        """No event loop will run the pump: operations wait, questions get no answer."""
        return bool(bpy.app.background) and not self.force_ui

    def tell(self, text: str, level: str = "INFO") -> None:
        self.state.message = Message(text, level, time.time())
        if level == "ERROR" or bpy.app.background:
            print(f"{self.name}: {level.lower()}: {text}")

    def describe(self, error: BaseException) -> str:
        explained = self.explain(error)
        if explained is not None:
            return explained
        if isinstance(error, BraasError):
            return str(error)
        # Not one of ours: a bug. Say so, with the trace in the console for the report.
        traceback.print_exception(error)
        return f"internal error ({type(error).__name__}: {error}); details in the system console"

    def busy(self, kind: str = "") -> list[Operation]:
        """The operations going on now (of `kind`), lasting ones aside."""
        return [op for op in self.state.bridge.active(kind) if op.kind not in self.lasting]

    def launch(self, operator: bpy.types.Operator | None, label: str, factory: Callable[[], Awaitable[Any]],
               kind: str = "", on_done: Callable[[Any], None] | None = None,
               retry: Callable[[], None] | None = None) -> set[str]:
        """Run `factory()` on the loop. UI: returns at once and `on_done(result)` runs later on the main thread
        (`retry` after the user trusts an unknown host key). Background: waits, runs `on_done`, and turns a
        failure into the operator's error report (`operator` is None for a follow-up step started from a
        callback, whose operator is gone: the failure becomes the message)."""
        if self.background():
            return self._wait(operator, label, factory, kind, on_done)

        def finished(operation: Operation) -> None:
            self._finish(operation, on_done, retry)

        self.state.bridge.run(label, factory, kind, on_done=finished)
        self.tell(f"{label}...")
        self.ensure_pump()
        return {"FINISHED"}

    def _wait(self, operator: bpy.types.Operator | None, label: str, factory: Callable[[], Awaitable[Any]],
              kind: str, on_done: Callable[[Any], None] | None) -> set[str]:
        bridge = self.state.bridge
        operation = bridge.run(label, factory, kind)
        try:
            result = operation.result()
        except BaseException as error:  # noqa: BLE001 - every failure becomes the operator's report
            bridge.take_finished()  # no pump runs in background mode to hand them out
            if operator is None:
                self.tell(f"{label}: {self.describe(error)}", "ERROR")
            else:
                operator.report({"ERROR"}, f"{label}: {self.describe(error)}")
            return {"CANCELLED"}
        bridge.take_finished()
        if on_done is not None:
            on_done(result)
        return {"FINISHED"}

    def _finish(self, operation: Operation, on_done: Callable[[Any], None] | None,
                retry: Callable[[], None] | None) -> None:
        if operation.cancelled:
            self.tell(f"{operation.label}: stopped", "WARNING")
            return
        error = operation.error()
        if isinstance(error, HostKeyUnknown) and retry is not None:
            self.state.host_key = (error, retry)
            self.invoke_popup("trust_host")
            return
        if error is not None:
            self.tell(f"{operation.label}: {self.describe(error)}", "ERROR")
            return
        self.tell(f"{operation.label}: done")
        if on_done is not None:
            on_done(operation.result())

    def invoke_popup(self, name: str) -> None:
        """Popups need a window; a timer has none in its context, so borrow the first one. Never in background
        mode: there a dialog would run its action at once, without anyone saying yes."""
        if bpy.app.background:
            return
        window_manager = bpy.context.window_manager
        if not window_manager or not window_manager.windows:
            return
        window = window_manager.windows[0]
        with bpy.context.temp_override(window=window, screen=window.screen):
            getattr(getattr(bpy.ops, self.operators), name)("INVOKE_DEFAULT")

    def pump(self) -> float | None:
        """The timer. Returns the delay until the next call (None would end the timer)."""
        state = self.state
        finished = state.bridge.take_finished()
        for operation in finished:
            if operation.on_done is not None:
                try:
                    operation.on_done(operation)
                except Exception as error:  # noqa: BLE001 - one bad callback must not stop the timer
                    self.tell(self.describe(error), "ERROR")
        if state.question is None and state.broker is not None:
            state.question = state.broker.next_question()
            if state.question is not None:
                self.invoke_popup("answer_prompt")
        changed = bool(finished)
        for task in list(state.periodic):
            changed = bool(task()) or changed
        active = state.bridge.active()
        busy = any(op.kind not in self.idle for op in active) or state.question is not None
        now, fast = time.monotonic(), self.fast()
        if changed or busy or fast or now - self._redrawn_at >= IDLE_INTERVAL_S - 0.05:
            self.redraw()
            self._redrawn_at = now
        if fast:
            return FAST_INTERVAL_S
        if busy:
            return BUSY_INTERVAL_S
        return WATCHING_INTERVAL_S if active else IDLE_INTERVAL_S

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """For background scripts and tests only: poll `predicate` while pumping, without a window."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def abort(self) -> int:
        """Stop what is going on (lasting operations aside) and refuse the open questions; returns how many
        operations stopped. Work already handed to a cluster keeps running there."""
        stopped = sum(1 for op in self.busy() if op.cancel())
        self._refuse_questions()
        if stopped:
            self.tell(f"stopped {stopped} operation(s)", "WARNING")
        else:
            self.tell("nothing to stop")
        return stopped

    def _refuse_questions(self) -> None:
        if self.state.broker is not None:
            self.state.broker.refuse_all()
        if self.state.question is not None:
            self.state.question.answer(None)
            self.state.question = None

    def ensure_pump(self) -> None:
        if not bpy.app.timers.is_registered(self.timer):
            bpy.app.timers.register(self.timer, first_interval=BUSY_INTERVAL_S, persistent=True)

    def start(self) -> None:
        """Register: the loop thread, this add-on's login questions for the transports, the timer."""
        if self.state.broker is not None:
            pool.prompts = self.state.broker
        self.state.bridge.start()
        if not self.background():
            self.ensure_pump()

    def stop(self) -> None:
        """Unregister: end the timer, refuse every question, stop the loop (closing its connections)."""
        if bpy.app.timers.is_registered(self.timer):
            bpy.app.timers.unregister(self.timer)
        self._refuse_questions()
        if self.state.broker is not None and pool.prompts is self.state.broker:
            pool.prompts = NoPrompts()  # the other add-on may go on, without these popups
        self.state.bridge.stop()
        self.state.periodic.clear()
        self.state.host_key = None
