"""The Blender face of braas_hpc: preferences, the Render Properties panel and its operators, on the add-on
toolkit (`braas_hpc.addon_kit`: the loop bridge, the timer, the login popups, Abort). Imported only inside
Blender (`braas_hpc.register()`); the core never imports it. `bpy` is imported inside the functions, so
this package imports without Blender."""

from __future__ import annotations


def _classes() -> tuple[type, ...]:
    from . import addon, job_news, ops_estimate, ops_jobs, ops_prefs, preferences, props, ui

    return (*preferences.CLASSES, *props.CLASSES, *ops_jobs.CLASSES, *ops_estimate.CLASSES, *addon.CLASSES,
            *ops_prefs.CLASSES, *job_news.CLASSES, *ui.CLASSES)


def _on_load(_dummy: object = None) -> None:
    from . import jobs_list

    jobs_list.load_registry()


def register(addon_id: str = "braas_hpc") -> None:
    import bpy

    from ..addon_kit import registration
    from ..core import local_blender
    from . import addon, jobs_list, preferences, props

    # Packing and local renders use the Blender the artist runs (its Python cannot import bpy by itself).
    local_blender.use_running_blender(bpy.app.binary_path)
    # Blender finds an add-on's preferences by the add-on's module name: this package's, or the extension's.
    addon.ADDON_ID = preferences.BraasPreferences.bl_idname = addon_id
    registration.register(_classes(), addon.NAME, scene=props.JobSettings, window_manager=props.Runtime)
    addon.runtime.start()
    addon.runtime.state.periodic.append(jobs_list.follower)
    for problem in preferences.sync_from_files(addon.preferences()):
        print(f"braas-hpc: {problem}")
    bpy.app.handlers.load_post.append(bpy.app.handlers.persistent(_on_load))
    if bpy.app.background:
        jobs_list.load_registry()
    else:  # the window manager is not ready while add-ons load at startup
        bpy.app.timers.register(lambda: jobs_list.load_registry(), first_interval=0.5)


def unregister() -> None:
    import bpy

    from ..addon_kit import registration
    from . import addon, jobs_list, ui

    if _on_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load)
    addon.runtime.stop()  # cancels the follower with every other operation
    jobs_list.follower.reset()
    ui.release_thumbnails()
    registration.unregister(_classes(), addon.NAME)
