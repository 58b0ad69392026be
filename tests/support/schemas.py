"""The `--format json` outputs checked against the schemas docs/scripting.md documents (docs/schemas/)."""

from __future__ import annotations

import json
from typing import Any

from support import ROOT

SCHEMAS = ROOT / "docs" / "schemas"


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def validated(text: str, name: str) -> Any:
    """`text` parsed as one JSON document and checked against the schema `name` in docs/schemas/."""
    from jsonschema import Draft202012Validator

    doc = json.loads(text)
    validator = Draft202012Validator(schema(name))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
    return doc
