"""Operators every add-on of the toolkit can have, made for its operator prefix and its `Runtime`:
Abort, and the popups for what only the user can decide: trusting an unknown host key (its fingerprint
shown) and answering a passphrase or one-time-code question. Answers go to the waiting connection and are
then cleared from the operator, so they are neither remembered for the next popup nor saved anywhere."""

from __future__ import annotations

from typing import Any

import bpy
from bpy.props import StringProperty

from ..core.transport.hostkeys import trust_host_key
from .runtime import Runtime

MAX_FIELDS = 3


def _made(base: type, name: str, prefix: str, runtime: Runtime, description: str) -> type:
    """`base` for one add-on: its bl_idname `<prefix>.<name>`, its runtime, its tooltip."""
    class_name = f"{prefix.upper()}_OT_{name}"
    namespace: dict[str, Any] = {"bl_idname": f"{prefix}.{name}", "runtime": runtime, "__qualname__": class_name,
                                 "__module__": base.__module__}
    if description:
        namespace["bl_description"] = description
    return type(class_name, (base,), namespace)


class Abort(bpy.types.Operator):
    bl_label = "Abort"
    bl_options = {"REGISTER", "INTERNAL"}
    runtime: Runtime

    def execute(self, context: bpy.types.Context) -> set[str]:
        self.runtime.abort()
        return {"FINISHED"}


class TrustHost(bpy.types.Operator):
    """Record the cluster's host key as trusted, after you have compared its fingerprint"""

    bl_label = "Unknown Host Key"
    bl_options = {"INTERNAL"}
    runtime: Runtime

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.runtime.state.host_key is None or bpy.app.background:  # no one to ask: never trust by default
            return {"CANCELLED"}
        return context.window_manager.invoke_props_dialog(self, width=560, confirm_text="Trust and Connect")

    def draw(self, context: bpy.types.Context) -> None:
        if self.runtime.state.host_key is None:
            return
        error, _retry = self.runtime.state.host_key
        column = self.layout.column(align=True)
        column.label(text=f"{error.host} (port {error.port}) is not in {error.known_hosts}.", icon="ERROR")
        column.label(text=f"{error.key_type} key fingerprint:")
        column.label(text=error.fingerprint)
        column.separator()
        column.label(text="Compare it with the one your site publishes. Trust it only if they are the same.")

    def execute(self, context: bpy.types.Context) -> set[str]:
        state = self.runtime.state
        if state.host_key is None:
            return {"CANCELLED"}
        error, retry = state.host_key
        state.host_key = None
        path = trust_host_key(error.known_hosts, error.host, error.port, error.public_key)
        self.runtime.tell(f"recorded the key of {error.host} in {path}")
        retry()
        return {"FINISHED"}

    def cancel(self, context: bpy.types.Context) -> None:
        self.runtime.state.host_key = None
        self.runtime.tell("host key not trusted; nothing was recorded", "WARNING")


def _secret(index: int) -> StringProperty:
    return StringProperty(name=f"Answer {index}", subtype="PASSWORD", options={"SKIP_SAVE", "HIDDEN"})


class AnswerPrompt(bpy.types.Operator):
    """Answer the cluster's question (key passphrase, one-time code)"""

    bl_label = "Cluster Login"
    bl_options = {"INTERNAL"}
    runtime: Runtime

    answer_1: _secret(1)
    answer_2: _secret(2)
    answer_3: _secret(3)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.runtime.state.question is None:
            return {"CANCELLED"}
        return context.window_manager.invoke_props_dialog(self, width=460, confirm_text="Send")

    def draw(self, context: bpy.types.Context) -> None:
        question = self.runtime.state.question
        if question is None:
            return
        self.layout.label(text=question.title, icon="LOCKED")
        if question.instructions:
            self.layout.label(text=question.instructions)
        for index, (prompt, _echo) in enumerate(question.fields[:MAX_FIELDS], start=1):
            self.layout.prop(self, f"answer_{index}", text=prompt.strip().rstrip(":"))

    def execute(self, context: bpy.types.Context) -> set[str]:
        state = self.runtime.state
        question = state.question
        count = len(question.fields) if question is not None else 0
        answers = [getattr(self, f"answer_{i}") for i in range(1, MAX_FIELDS + 1)][:count]
        self._clear()
        if question is None:
            return {"CANCELLED"}
        state.question = None
        question.answer(answers if count <= MAX_FIELDS else None)
        return {"FINISHED"}

    def cancel(self, context: bpy.types.Context) -> None:
        state = self.runtime.state
        if state.question is not None:
            state.question.answer(None)
            state.question = None
        self._clear()

    def _clear(self) -> None:
        for index in range(1, MAX_FIELDS + 1):
            setattr(self, f"answer_{index}", "")


def abort_operator(prefix: str, runtime: Runtime, description: str) -> type:
    """`<prefix>.abort`: stops what the add-on is doing now (`description` says what, as its tooltip)."""
    return _made(Abort, "abort", prefix, runtime, description)


def login_popups(prefix: str, runtime: Runtime) -> tuple[type, ...]:
    """`<prefix>.trust_host` and `<prefix>.answer_prompt`, which the runtime's pump opens."""
    return (_made(TrustHost, "trust_host", prefix, runtime, ""), _made(AnswerPrompt, "answer_prompt", prefix,
                                                                      runtime, ""))
