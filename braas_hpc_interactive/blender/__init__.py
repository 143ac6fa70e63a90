"""The Blender face of braas_hpc_interactive: the sidebar panels, operators and the remote viewport
engine. Imported only inside Blender (`braas_hpc_interactive.register()`); `links` (no bpy) holds the
live connections and the add-on's own loop."""

from __future__ import annotations


def _classes() -> tuple[type, ...]:
    from . import engine, ops, props, ui

    return (*props.CLASSES, *ops.CLASSES, *ui.CLASSES, *engine.CLASSES)


def _on_load(_dummy: object = None) -> None:
    from . import sessions_list

    sessions_list.load_records()


def register() -> None:
    import bpy

    from braas_hpc.core import local_blender

    from . import props, runtime, sessions_list

    local_blender.use_running_blender(bpy.app.binary_path)  # packs the scene a session uploads
    for cls in _classes():
        bpy.utils.register_class(cls)
    props.attach()
    runtime.start()
    bpy.app.handlers.load_post.append(bpy.app.handlers.persistent(_on_load))
    if bpy.app.background:  # no timer runs there; the window manager already exists
        runtime.state.records_loaded = sessions_list.load_records()


def unregister() -> None:
    import bpy

    from . import engine, props, runtime, sessions_list

    if _on_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load)
    try:
        engine.restore_engines()  # a scene left on an unregistered engine would show nothing
    except (AttributeError, RuntimeError):
        pass  # bpy.data is not reachable at every moment of Blender's shutdown
    runtime.stop()  # closes the viewport link and every tunnel the add-on opened, then its loop
    sessions_list.clear()
    props.detach()
    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
