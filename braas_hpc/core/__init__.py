"""The bpy-free core of braas-hpc: presets, frames, jobs, schedulers, transports, the registry.

Nothing under this package may import `bpy`; the Blender add-on and the CLI are thin callers of
`braas_hpc.core.service`.
"""

VERSION = "0.1.0"  # stamps the scripts directory on clusters; keep equal to pyproject's version
