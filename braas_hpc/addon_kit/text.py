"""Text for panels (no bpy): a Blender label does not wrap."""

from __future__ import annotations


def wrap_text(text: str, width: int) -> list[str]:
    """Lines of at most `width` characters, broken at spaces: panels have no wrapping label."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        while len(paragraph) > width:
            cut = paragraph.rfind(" ", 0, width)
            cut = cut if cut > 0 else width
            lines.append(paragraph[:cut])
            paragraph = paragraph[cut:].lstrip()
        lines.append(paragraph)
    return lines
