"""The interactive add-on's core (no bpy): sessions on compute nodes, their commands and tunnels."""
