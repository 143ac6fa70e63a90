"""The add-on toolkit: what both Blender add-ons (braas_hpc and braas_hpc_interactive) run on.

- `bridge`: an asyncio loop in a thread and the operations handed to it (no bpy);
- `prompting`: questions from the SSH layer waiting for the user's answer (no bpy);
- `text`: line wrapping for panels, which have no wrapping label (no bpy);
- `runtime`: the main thread's face of one add-on (message, launch, pump timer, start, stop), bpy;
- `operators`: the Abort operator and the login popups, made for an add-on's operator prefix, bpy.

Each add-on makes one `Runtime` of its own, and so its own loop thread: enabling, disabling or
upgrading one add-on never stops the other's work or connections. Importing this package imports no bpy.
"""
