"""The `--json` contract's schemas (braas_hpc/cli_json.py) are valid JSON Schemas, and docs/json.md
describes every field of every command's document (a field added without a word there fails)."""

from __future__ import annotations

import re

import jsonschema
import pytest

from braas_hpc.cli_json import SCHEMAS
from tests.helpers import REPO

DOCS = (REPO / "docs" / "json.md").read_text()


def _sections() -> dict[str, str]:
    parts = re.split(r"^## (.+)$", DOCS, flags=re.MULTILINE)
    return {title.strip().strip("`"): text for title, text in zip(parts[1::2], parts[2::2], strict=True)}


def _fields(schema: dict, prefix: str = "") -> set[str]:
    names: set[str] = set()
    for name, sub in schema.get("properties", {}).items():
        if name != "schema":
            names.add(name)
        names |= _fields(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            names |= _fields(schema[key])
    for alternative in schema.get("anyOf", []):
        names |= _fields(alternative)
    return names


@pytest.mark.parametrize("verb", sorted(SCHEMAS))
def test_every_field_is_documented_under_its_command(verb: str) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[verb])
    sections = _sections()
    assert verb in sections, f"docs/json.md has no section `## {verb}`"
    text = sections[verb]
    if "Everything of `submit`" in text:
        text += sections["submit"]
    undocumented = {name for name in _fields(SCHEMAS[verb]) if not re.search(rf"`(?:[a-z_]+\.)?{name}`", text)}
    assert not undocumented, f"docs/json.md, `## {verb}`: no word on {sorted(undocumented)}"
