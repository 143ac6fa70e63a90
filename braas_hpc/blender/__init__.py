"""The Blender face of braas_hpc: preferences, the Render Properties panel, operators and the loop
bridge. Imported only inside Blender (`braas_hpc.register()`); the core never imports it. `bpy` is
imported inside the functions so that `bridge` and `prompting` (no bpy) can be tested without Blender."""

from __future__ import annotations


def _classes() -> tuple[type, ...]:
    from . import ops_jobs, ops_popups, ops_prefs, preferences, props, ui

    return (*preferences.CLASSES, *props.CLASSES, *ops_jobs.CLASSES, *ops_popups.CLASSES, *ops_prefs.CLASSES,
            *ui.CLASSES)


def _on_load(_dummy: object = None) -> None:
    from . import jobs_list

    jobs_list.load_registry()


def register(addon_id: str = "braas_hpc") -> None:
    import bpy

    from ..core import local_blender
    from . import jobs_list, preferences, props, runtime

    # Packing and local renders use the Blender the artist runs (its Python cannot import bpy by itself).
    local_blender.use_running_blender(bpy.app.binary_path)
    # Blender finds an add-on's preferences by the add-on's module name: this package's, or the extension's.
    runtime.ADDON_ID = preferences.BraasPreferences.bl_idname = addon_id
    for cls in _classes():
        bpy.utils.register_class(cls)
    props.attach()
    runtime.start()
    runtime.state.periodic.append(jobs_list.auto_refresh)
    for problem in preferences.sync_from_files(runtime.preferences()):
        print(f"braas-hpc: {problem}")
    bpy.app.handlers.load_post.append(bpy.app.handlers.persistent(_on_load))
    if bpy.app.background:
        jobs_list.load_registry()
    else:  # the window manager is not ready while add-ons load at startup
        bpy.app.timers.register(lambda: jobs_list.load_registry(), first_interval=0.5)


def unregister() -> None:
    import bpy

    from . import props, runtime, ui

    if _on_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load)
    runtime.stop()
    ui.release_thumbnails()
    props.detach()
    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
