"""Generate the files that are derived from others, or check that they are current.

    python scripts/generate.py schemas [--check]   docs/schemas/ticket-created.schema.json
                                                   from the pydantic models (worker/models.py)
    python scripts/generate.py alerts [--check]    the PrometheusRule of the monitoring component
                                                   from deploy/prometheus/alerts.yaml

``make schemas`` and ``make alerts`` run them; tests/test_contract.py and tests/test_alerts.py
run them with ``--check``, which exits 1 (and names the file) when the committed file differs
from what would be generated, so the copies cannot drift from their sources.

The input schema is pydantic's ``model_json_schema`` of ``TicketEvent`` and ``Ticket`` (the two
shapes the mapping accepts, told apart by a top-level ``sellerId``), in JSON Schema draft-07
(``definitions``, so the AsyncAPI document can use it as is), with what pydantic cannot see in
the validators' functions written into the schema by the hooks of ``EventSchema``: the event's
enums match in any ASCII case (``question``), ``reference.type`` also takes the aliases
(``order_id``), and ``created_at``/``createdAt`` must be RFC 3339 with an offset.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from worker import models

ROOT = Path(__file__).resolve().parent.parent
INPUT_SCHEMA = ROOT / "docs" / "schemas" / "ticket-created.schema.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "components" / "monitoring" / "prometheusrule.yaml"
DRAFT_07 = "http://json-schema.org/draft-07/schema#"


def any_case(word: str) -> str:
    """A regex matching ``word`` in any ASCII case (JSON Schema regexes have no ``(?i)``)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


class EventSchema(GenerateJsonSchema):
    """pydantic's generator, plus what the models' validator functions accept or refuse."""

    def function_before_schema(
        self, schema: core_schema.BeforeValidatorFunctionSchema
    ) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        function = schema["function"].get("function")
        aliases: list[str] = []
        if function is models._reference_type:
            aliases = sorted(models._REFERENCE_TYPES)
        elif function is not models._upper:
            return inner
        words = list(dict.fromkeys(word.lower() for word in [*inner["enum"], *aliases]))
        rest = {k: v for k, v in inner.items() if k != "enum"}
        pattern = "^(?:" + "|".join(any_case(word) for word in words) + ")$"
        return rest | {"pattern": pattern}

    def function_after_schema(
        self, schema: core_schema.AfterValidatorFunctionSchema
    ) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        if schema["function"].get("function") is models._rfc3339:
            # Python's \d (without re.ASCII) would match any Unicode digit: spell it out.
            pattern = models._RFC3339.pattern.replace(r"\d", "[0-9]")
            inner |= {"format": "date-time", "pattern": f"^{pattern}$"}
        return inner


def portable_patterns(node: Any) -> Any:
    """End every ``...$`` pattern with ``(?!\\n)$``.

    JSON Schema regexes are ECMA-262, where ``$`` is the end of the text; Python's ``re``
    (the ``jsonschema`` package, and many validators built on PCRE) also lets ``$`` match
    before a final newline, which would accept ``"4711\\n"``. The lookahead means the same in
    ECMA-262 and closes that gap elsewhere, as the models' own full matches do.
    """
    if isinstance(node, dict):
        fixed = {key: portable_patterns(value) for key, value in node.items()}
        pattern = fixed.get("pattern")
        if isinstance(pattern, str) and pattern.endswith("$") and not pattern.endswith(END):
            fixed["pattern"] = pattern[:-1] + END
        return fixed
    if isinstance(node, list):
        return [portable_patterns(item) for item in node]
    return node


END = "(?!\\n)$"


def input_schema() -> dict[str, Any]:
    _, top = models_json_schema(
        [(models.TicketEvent, "validation"), (models.Ticket, "validation")],
        ref_template="#/definitions/{model}",
        schema_generator=EventSchema,
    )
    return {
        "$schema": DRAFT_07,
        "$id": "urn:scx-ticket-forwarder:schema:ticket-created",
        "title": "ticket.created: a message body the worker forwards",
        "description": (
            "Generated from worker/models.py by `make schemas`; do not edit. A body with a "
            "top-level sellerId is an API ticket (POST /v1/channel/ticket in camelCase), "
            "anything else a marketplace event whose data is the ticket in snake_case. "
            "Unknown keys are ignored. Not expressible here: created_at must also be a real "
            "calendar date (format date-time)."
        ),
        "type": "object",
        "if": {"required": ["sellerId"]},
        "then": {"$ref": "#/definitions/Ticket"},
        "else": {"$ref": "#/definitions/TicketEvent"},
        "definitions": portable_patterns(top.get("definitions", top.get("$defs"))),
    }


def prometheus_rule() -> str:
    rules = yaml.safe_load(ALERTS.read_text())
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "scx-forwarder",
            "labels": {"app.kubernetes.io/name": "scx-forwarder"},
        },
        "spec": {"groups": rules["groups"]},
    }
    header = (
        "# Generated from deploy/prometheus/alerts.yaml by `make alerts`; do not edit.\n"
        "# The Prometheus Operator loads it when its ruleSelector matches these labels.\n"
    )
    text = yaml.dump(rule, Dumper=_BlockDumper, sort_keys=False, width=100, allow_unicode=True)
    return header + text


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the expressions) as ``|`` blocks, as they are in alerts.yaml."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _string)


def write_or_check(path: Path, text: str, *, check: bool, target: str) -> bool:
    if check:
        current = path.read_text() if path.exists() else None
        if current != text:
            print(f"{path.relative_to(ROOT)} is out of date: run `make {target}`", file=sys.stderr)
            return False
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path.relative_to(ROOT)}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("schemas", "alerts"))
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    if args.what == "schemas":
        text = json.dumps(input_schema(), indent=2, ensure_ascii=False) + "\n"
        ok = write_or_check(INPUT_SCHEMA, text, check=args.check, target="schemas")
    else:
        ok = write_or_check(PROMETHEUS_RULE, prometheus_rule(), check=args.check, target="alerts")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
