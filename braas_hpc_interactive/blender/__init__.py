"""The Blender face of braas_hpc_interactive: the sidebar panels, operators and the remote viewport
engine, on the add-on toolkit (`braas_hpc.addon_kit`). Imported only inside Blender
(`braas_hpc_interactive.register()`); `links` (no bpy) holds the live connections and the add-on's own
loop."""

from __future__ import annotations


def _classes() -> tuple[type, ...]:
    from . import addon, engine, ops, props, ui

    return (*props.CLASSES, *ops.CLASSES, *addon.CLASSES, *ui.CLASSES, *engine.CLASSES)


def _on_load(_dummy: object = None) -> None:
    from . import sessions_list

    sessions_list.load_records()


def register() -> None:
    import bpy

    from braas_hpc.addon_kit import registration
    from braas_hpc.core import local_blender

    from . import addon, props, sessions_list

    local_blender.use_running_blender(bpy.app.binary_path)  # packs the scene a session uploads
    registration.register(_classes(), addon.NAME, scene=props.SessionSettings, window_manager=props.Runtime)
    addon.start()
    bpy.app.handlers.load_post.append(bpy.app.handlers.persistent(_on_load))
    if bpy.app.background:  # no timer runs there; the window manager already exists
        addon.panel.records_loaded = sessions_list.load_records()


def unregister() -> None:
    import bpy

    from braas_hpc.addon_kit import registration

    from . import addon, engine, sessions_list

    if _on_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load)
    try:
        engine.restore_engines()  # a scene left on an unregistered engine would show nothing
    except (AttributeError, RuntimeError):
        pass  # bpy.data is not reachable at every moment of Blender's shutdown
    addon.stop()  # closes the viewport link and every tunnel the add-on opened, then its loop
    sessions_list.clear()
    registration.unregister(_classes(), addon.NAME)
