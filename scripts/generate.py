"""Generate the files that are derived from others, or check that they are current.

    python scripts/generate.py schemas [--check]   docs/schemas/ticket-created.schema.json
                                                   from the pydantic models (worker/models.py)
    python scripts/generate.py alerts [--check]    the PrometheusRule of the monitoring component
                                                   from deploy/prometheus/alerts.yaml
    python scripts/generate.py docs [--check]      docs/reference/: the settings (from the
                                                   Settings class), the command line (from the
                                                   argument parser), the metrics (from the
                                                   Prometheus registry), the alert rules

``make schemas``, ``make alerts`` and ``make reference`` run them; tests/test_contract.py,
tests/test_alerts.py and tests/test_docs.py run them with ``--check``, which exits 1 (and names
the file) when the committed file differs from what would be generated, so the copies cannot
drift from their sources.

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
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import SecretStr
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


# --- reference pages (make reference) ---------------------------------------------------
# Each page is a function of the code it describes, so the docs site cannot describe a
# setting, an option, a metric or an alert that is not there, or miss one that is.

REFERENCE = ROOT / "docs" / "reference"
GENERATED = (
    "<!-- Generated by `make reference` (scripts/generate.py docs) from {source}; do not edit. -->"
)


def _text(text: str) -> str:
    """``text`` as Markdown: one line, ``<`` and ``>`` outside code spans written as entities
    (``<AMQP_QUEUE>`` in a help text is no HTML tag)."""
    parts = " ".join(text.split()).split("`")
    for index in range(0, len(parts), 2):
        parts[index] = parts[index].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _cell(text: str) -> str:
    """``text`` fit for one cell of a Markdown table."""
    return _text(text).replace("|", "\\|")


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(metadata: list[Any]) -> list[str]:
    words = []
    for item in metadata:
        if isinstance(item, annotated_types.Gt):
            words.append(f"> {_number(item.gt)}")  # type: ignore[arg-type]
        elif isinstance(item, annotated_types.Ge):
            words.append(f"≥ {_number(item.ge)}")  # type: ignore[arg-type]
        elif isinstance(item, annotated_types.Le):
            words.append(f"≤ {_number(item.le)}")  # type: ignore[arg-type]
        elif isinstance(item, annotated_types.MinLen) and item.min_length > 1:
            words.append(f"at least {item.min_length} characters")
        elif isinstance(item, annotated_types.MaxLen):
            words.append(f"at most {item.max_length} characters")
    return words


def _type_name(annotation: Any) -> tuple[str, list[str]]:
    """What a value of ``annotation`` is, in words, and the bounds its own metadata sets."""
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        name, bounds = _type_name(inner)
        for item in extra:
            bounds += _bounds(getattr(item, "metadata", [item]))
        return name, bounds
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        [inner] = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _type_name(inner)
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(f"`{arg}`" for arg in typing.get_args(annotation)), []
    if typing.get_origin(annotation) is tuple:
        element, bounds = _type_name(typing.get_args(annotation)[0])
        each = f" ({element} {' '.join(bounds)})" if bounds else f" ({element})"
        return "comma-separated list" + (each if element != "text" else ""), []
    names = {
        bool: "boolean (`0`/`1`, `false`/`true`)",
        int: "integer",
        float: "number",
        str: "text",
        SecretStr: "secret text",
        Path: "file path",
    }
    return names[annotation], []


def _default(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    if isinstance(value, tuple):
        return f"`{','.join(_number(item) for item in value)}`" if value else "(empty)"
    return f"`{_number(value)}`"


def settings_page() -> str:
    from worker.core.settings import Settings

    lines = [
        "# Settings",
        "",
        GENERATED.format(source="worker/core/settings.py"),
        "",
        "Every setting is an environment variable (the name in any case), read and validated "
        "when a command starts. A bad value stops it with exit code 2 and one line per bad "
        "variable on stderr; values are never echoed. `run`, `events`, `check`, `publish` and "
        "`dlq` read the same variables.",
        "",
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise SystemExit(f"Settings.{name} has no description: add Field(description=...)")
        kind, bounds = _type_name(field.annotation)
        kind = ", ".join([kind, *bounds, *_bounds(field.metadata)])
        lines.append(
            f"| `{name.upper()}` | {_cell(kind)} | {_default(field.default)} "
            f"| {_cell(field.description)} |"
        )
    return "\n".join(lines) + "\n"


def _usage(parser: argparse.ArgumentParser) -> str:
    # A fixed width, so the page does not depend on the terminal it was generated in.
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=96)
    first, *rest = parser.format_usage().removeprefix("usage: ").rstrip().split("\n")
    return "\n".join([first, *(line.removeprefix(" " * len("usage: ")) for line in rest)])


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            name = ", ".join(action.option_strings)
            if action.nargs != 0:
                choices = "{" + ",".join(map(str, action.choices or ())) + "}"
                name += f" {action.metavar or (choices if action.choices else action.dest.upper())}"
        else:
            name = str(action.metavar or action.dest)
        notes = []
        if action.required and action.option_strings:
            notes.append("required")
        unset = action.default is None or action.default is argparse.SUPPRESS
        if not unset and action.nargs != 0:
            notes.append(f"default `{action.default}`")
        text = "; ".join([action.help or "", *notes]).strip("; ")
        rows.append(f"| `{name}` | {_cell(text)} |")
    return rows


def _commands(
    parser: argparse.ArgumentParser, path: list[str], depth: int
) -> list[tuple[list[str], str, argparse.ArgumentParser, int]]:
    """Every command under ``parser``: its words, its help line, its parser, its depth."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for word, sub in action.choices.items():
                found.append(([*path, word], helps.get(word, ""), sub, depth))
                found += _commands(sub, [*path, word], depth + 1)
    return found


def cli_page() -> str:
    from worker.cli import _parser

    parser = _parser()
    lines = [
        "# Command line",
        "",
        GENERATED.format(source="the argument parser in worker/cli.py"),
        "",
        f"`{_usage(parser)}`",
        "",
        parser.description or "",
        "",
        "Every command reads its settings from the environment ([Settings](settings.md)); "
        "`python -m worker` is the same program as `scx-forwarder`.",
        "",
        "| argument | meaning |",
        "|---|---|",
        *_option_rows(parser),
        "",
        "| command | does |",
        "|---|---|",
    ]
    commands = _commands(parser, ["scx-forwarder"], 2)
    for words, help_line, _, _ in commands:
        anchor = "-".join(words[1:])
        lines.append(f"| [`{' '.join(words[1:])}`](#{anchor}) | {_cell(help_line)} |")
    for words, help_line, sub, depth in commands:
        anchor = "-".join(words[1:])
        lines += ["", f"{'#' * depth} `{' '.join(words[1:])}` {{#{anchor}}}", ""]
        lines += [_text(help_line[:1].upper() + help_line[1:]) + ".", ""] if help_line else []
        lines += ["```", _usage(sub), "```"]
        rows = _option_rows(sub)
        if rows:
            lines += ["", "| argument | meaning |", "|---|---|", *rows]
    return "\n".join(lines) + "\n"


def metrics_page() -> str:
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    import worker.obs.metrics as metrics

    # The registry's collectors, not a list kept here: whatever the code registers is shown.
    collectors = [
        collector
        for collector in list(REGISTRY._collector_to_names)
        if isinstance(collector, MetricWrapperBase) and collector._name.startswith(metrics.PREFIX)
    ]
    lines = [
        "# Metrics",
        "",
        GENERATED.format(source="the Prometheus registry (worker/obs/metrics.py)"),
        "",
        "`scx-forwarder run` and `scx-forwarder events` serve these on `/metrics` "
        "(`METRICS_PORT`), next to the client library's `process_*` and `python_*` series. "
        "A counter is exposed with `_total`, a histogram as `_bucket`, `_sum` and `_count`. "
        "The `events_*` series appear only in an `events` process.",
        "",
        "| metric | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    for collector in sorted(collectors, key=lambda c: c._name):
        name = collector._name + ("_total" if collector._type == "counter" else "")
        labels = ", ".join(f"`{label}`" for label in collector._labelnames)
        lines.append(
            f"| `{name}` | {collector._type} | {labels} | {_cell(collector._documentation)} |"
        )
    return "\n".join(lines) + "\n"


def alerts_page() -> str:
    rules = yaml.safe_load(ALERTS.read_text())
    lines = [
        "# Alert rules",
        "",
        GENERATED.format(source="deploy/prometheus/alerts.yaml"),
        "",
        "The rule file `deploy/prometheus/alerts.yaml` (and, generated from it by `make alerts`, "
        "the `PrometheusRule` in `deploy/k8s/components/monitoring/prometheusrule.yaml`). "
        "`make test` runs `promtool check rules` and the unit tests in "
        "`deploy/prometheus/alerts.test.yaml`. The [operations guide]"
        "(../guides/operations.md#alerts) says how to read them.",
        "",
        "| alert | group | severity | for | summary |",
        "|---|---|---|---|---|",
    ]
    details: list[str] = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule["alert"]
            annotations = rule.get("annotations", {})
            lines.append(
                f"| [{name}](#{name.lower()}) | `{group['name']}` "
                f"| {rule.get('labels', {}).get('severity', '')} | {rule.get('for', '–')} "
                f"| {_cell(annotations.get('summary', ''))} |"
            )
            details += [
                "",
                f"## {name} {{#{name.lower()}}}",
                "",
                " ".join(annotations.get("description", "").split()),
                "",
                "```promql",
                rule["expr"].rstrip(),
                "```",
            ]
    return "\n".join(lines + details) + "\n"


def reference_pages() -> dict[Path, str]:
    return {
        REFERENCE / "settings.md": settings_page(),
        REFERENCE / "cli.md": cli_page(),
        REFERENCE / "metrics.md": metrics_page(),
        REFERENCE / "alerts.md": alerts_page(),
    }


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
    parser.add_argument("what", choices=("schemas", "alerts", "docs"))
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    if args.what == "schemas":
        text = json.dumps(input_schema(), indent=2, ensure_ascii=False) + "\n"
        ok = write_or_check(INPUT_SCHEMA, text, check=args.check, target="schemas")
    elif args.what == "alerts":
        ok = write_or_check(PROMETHEUS_RULE, prometheus_rule(), check=args.check, target="alerts")
    else:
        results = [
            write_or_check(path, text, check=args.check, target="reference")
            for path, text in reference_pages().items()
        ]
        ok = all(results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
