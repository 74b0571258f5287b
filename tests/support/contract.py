"""Validators for the JSON Schemas in docs/schemas."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def schema(name: str, fragment: str = "") -> jsonschema.Draft7Validator:
    """A validator for ``name`` (a file in docs/schemas), or for one of its definitions."""
    document = json.loads((SCHEMAS / name).read_text())
    if fragment:
        document = {"$ref": "#" + fragment, "definitions": document["definitions"]}
    return jsonschema.Draft7Validator(document)
