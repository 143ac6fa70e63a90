"""Popups for what only the user can decide: trusting an unknown host key (its fingerprint shown) and
answering a passphrase or one-time-code question. Answers go to the waiting connection and are then
cleared from the operator, so they are neither remembered for the next popup nor saved anywhere."""

from __future__ import annotations

import bpy
from bpy.props import StringProperty

from ..core.transport.hostkeys import trust_host_key
from . import runtime

MAX_FIELDS = 3


class BRAAS_HPC_OT_trust_host(bpy.types.Operator):
    """Record the cluster's host key as trusted, after you have compared its fingerprint"""

    bl_idname = "braas_hpc.trust_host"
    bl_label = "Unknown Host Key"
    bl_options = {"INTERNAL"}

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if runtime.state.host_key is None or bpy.app.background:  # no one to ask: never trust by default
            return {"CANCELLED"}
        return context.window_manager.invoke_props_dialog(self, width=560, confirm_text="Trust and Connect")

    def draw(self, context: bpy.types.Context) -> None:
        if runtime.state.host_key is None:
            return
        error, _retry = runtime.state.host_key
        column = self.layout.column(align=True)
        column.label(text=f"{error.host} (port {error.port}) is not in {error.known_hosts}.", icon="ERROR")
        column.label(text=f"{error.key_type} key fingerprint:")
        column.label(text=error.fingerprint)
        column.separator()
        column.label(text="Compare it with the one your site publishes. Trust it only if they are the same.")

    def execute(self, context: bpy.types.Context) -> set[str]:
        if runtime.state.host_key is None:
            return {"CANCELLED"}
        error, retry = runtime.state.host_key
        runtime.state.host_key = None
        path = trust_host_key(error.known_hosts, error.host, error.port, error.public_key)
        runtime.tell(f"recorded the key of {error.host} in {path}")
        retry()
        return {"FINISHED"}

    def cancel(self, context: bpy.types.Context) -> None:
        runtime.state.host_key = None
        runtime.tell("host key not trusted; nothing was recorded", "WARNING")


def _secret(index: int) -> StringProperty:
    return StringProperty(name=f"Answer {index}", subtype="PASSWORD", options={"SKIP_SAVE", "HIDDEN"})


class BRAAS_HPC_OT_answer_prompt(bpy.types.Operator):
    """Answer the cluster's question (key passphrase, one-time code)"""

    bl_idname = "braas_hpc.answer_prompt"
    bl_label = "Cluster Login"
    bl_options = {"INTERNAL"}

    answer_1: _secret(1)
    answer_2: _secret(2)
    answer_3: _secret(3)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if runtime.state.question is None:
            return {"CANCELLED"}
        return context.window_manager.invoke_props_dialog(self, width=460, confirm_text="Send")

    def draw(self, context: bpy.types.Context) -> None:
        question = runtime.state.question
        if question is None:
            return
        self.layout.label(text=question.title, icon="LOCKED")
        if question.instructions:
            self.layout.label(text=question.instructions)
        for index, (prompt, _echo) in enumerate(question.fields[:MAX_FIELDS], start=1):
            self.layout.prop(self, f"answer_{index}", text=prompt.strip().rstrip(":"))

    def execute(self, context: bpy.types.Context) -> set[str]:
        question = runtime.state.question
        count = len(question.fields) if question is not None else 0
        answers = [getattr(self, f"answer_{i}") for i in range(1, MAX_FIELDS + 1)][:count]
        for index in range(1, MAX_FIELDS + 1):
            setattr(self, f"answer_{index}", "")
        if question is None:
            return {"CANCELLED"}
        runtime.state.question = None
        question.answer(answers if count <= MAX_FIELDS else None)
        return {"FINISHED"}

    def cancel(self, context: bpy.types.Context) -> None:
        if runtime.state.question is not None:
            runtime.state.question.answer(None)
            runtime.state.question = None
        for index in range(1, MAX_FIELDS + 1):
            setattr(self, f"answer_{index}", "")


CLASSES = (BRAAS_HPC_OT_trust_host, BRAAS_HPC_OT_answer_prompt)
