"""The machine-readable contract: docs/asyncapi.yaml and the JSON Schemas in docs/schemas/.

- the AsyncAPI document is valid by the official parser (npm ``@asyncapi/parser``, installed
  into tools/asyncapi by ``.ci/run``), and its names are the worker's defaults;
- ``ticket-created.schema.json`` is what ``make schemas`` generates from worker/models.py;
- the schema and the worker agree: every sample the worker forwards validates, and every
  body the worker refuses is refused by the schema (and the other way round, over a corpus
  of near misses);
- the dead-letter and delay copies the real worker writes match their header schemas;
- every example in the AsyncAPI document validates against its message's schemas.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml
from aio_pika.abc import AbstractChannel

from tests.support.broker import Names, collect, publish
from tests.support.contract import SCHEMAS, schema
from tests.support.events import event
from tests.support.examples import SEED_EVENT_DATA, SEED_TICKET
from tests.support.forwarder import StartWorker
from worker.core.errors import MessageError
from worker.core.settings import Settings
from worker.emulator import Emulator
from worker.forward.mapping import decode_message
from worker.ops.samples import invalid_events, valid_event

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
ASYNCAPI = DOCS / "asyncapi.yaml"
CHECKER = ROOT / "tools" / "asyncapi"


INPUT = schema("ticket-created.schema.json")


def valid(validator: jsonschema.Draft7Validator, document: Any) -> bool:
    return not list(validator.iter_errors(document))


def forwards(body: bytes) -> bool:
    try:
        decode_message(body)
    except MessageError:
        return False
    return True


# --- AsyncAPI ------------------------------------------------------------------------


def test_the_asyncapi_document_is_valid_by_the_asyncapi_parser() -> None:
    node = shutil.which("node")
    if node is None or not (CHECKER / "node_modules" / "@asyncapi" / "parser").is_dir():
        message = "npm @asyncapi/parser is not installed: npm ci --prefix tools/asyncapi"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [node, str(CHECKER / "check.mjs"), str(ASYNCAPI)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert parsed["version"].startswith("3.")
    defaults = Settings()
    assert {
        defaults.amqp_binding_key,
        defaults.amqp_queue,
        defaults.dead_letter_queue,
        "ticket.forwarded",
        "ticket.dead_lettered",
        "ticket.replied",
        "ticket.replied.attachment",
        "scx.events.unrouted",
    } <= set(parsed["channels"])


def asyncapi() -> dict[str, Any]:
    document = yaml.safe_load(ASYNCAPI.read_text())
    assert isinstance(document, dict)
    return document


def test_asyncapi_names_are_the_worker_defaults() -> None:
    defaults = Settings()
    channels = asyncapi()["channels"]
    exchanges = {
        channel["bindings"]["amqp"]["exchange"]["name"]
        for channel in channels.values()
        if channel.get("bindings", {}).get("amqp", {}).get("is") == "routingKey"
    }
    assert exchanges == {defaults.amqp_exchange}
    assert channels["ticketCreated"]["address"] == defaults.amqp_binding_key
    assert channels["workQueue"]["address"] == defaults.amqp_queue
    assert channels["deadLetterQueue"]["address"] == defaults.dead_letter_queue
    delay = channels["delayQueue"]["address"]
    for name in defaults.retry_queues:
        seconds = name.removeprefix(defaults.amqp_queue + ".retry.").removesuffix("s")
        assert delay.replace("{delay}", seconds) == name


def resolve(reference: dict[str, Any]) -> jsonschema.Draft7Validator:
    """A validator for an AsyncAPI schema: inline, or a $ref into docs/schemas or components."""
    ref = reference.get("$ref")
    if ref is None:
        return jsonschema.Draft7Validator(reference)
    if ref.startswith("#/components/schemas/"):
        return jsonschema.Draft7Validator(asyncapi()["components"]["schemas"][ref.split("/")[-1]])
    path, _, fragment = ref.partition("#")
    return schema(Path(path).name, fragment)


def examples() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for name, message in asyncapi()["components"]["messages"].items():
        for example in message.get("examples", []):
            found.append((name, example["name"], example))
    return found


@pytest.mark.parametrize(("message", "name", "example"), examples(), ids=lambda x: str(x))
def test_every_asyncapi_example_validates_against_its_message(
    message: str, name: str, example: dict[str, Any]
) -> None:
    spec = asyncapi()["components"]["messages"][message]
    if "payload" in example:
        resolve(spec["payload"]).validate(example["payload"])
    if "headers" in example:
        resolve(spec["headers"]).validate(example["headers"])


def test_every_published_message_has_an_example() -> None:
    with_examples = {message for message, _, _ in examples()}
    published = {
        "ticketForwarded",
        "ticketDeadLettered",
        "ticketReplied",
        "ticketRepliedAttachment",
        "scxEvent",
        "unrouted",
    }
    assert published <= with_examples, published - with_examples


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.json")), ids=lambda p: p.name)
def test_every_schema_is_a_valid_draft_07_schema(path: Path) -> None:
    document = json.loads(path.read_text())
    assert document["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(document)


@pytest.mark.parametrize(
    ("name", "document"),
    [
        ("ticket-replied.schema.json", {"id": "e", "type": "ticket.replied", "source": "scx"}),
        (
            "ticket-forwarded.schema.json",
            {"id": "o", "type": "ticket.forwarded", "time": "2026-11-30T12:00:00Z",
             "source": "s", "data": {"ticket_id": "T", "seller_id": "S", "message_id": "m",
                                     "attempts": 1, "files": []}},
        ),
        (
            "ticket-dead-lettered.schema.json",
            {"id": "o", "type": "ticket.dead_lettered", "time": "2026-11-30T12:00:00Z",
             "source": "s", "data": {"ticket_id": "T", "seller_id": "S", "message_id": "m",
                                     "kind": "lost", "reason": "r"}},
        ),
        ("scx-event.schema.json", {"id": "e", "type": "X:Y", "time": "t", "source": "jtl"}),
    ],
)  # fmt: skip
def test_published_event_schemas_refuse_incomplete_documents(
    name: str, document: dict[str, Any]
) -> None:
    assert not valid(schema(name), document)


# --- the input schema and the worker agree -------------------------------------------


def test_the_input_schema_is_generated_from_the_models() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate.py"), "schemas", "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_sample_the_worker_forwards_validates() -> None:
    rng = random.Random(3)
    bodies = [orjson.dumps(valid_event(index, rng)) for index in range(300)]
    bodies.append(orjson.dumps({"data": SEED_EVENT_DATA}))
    bodies.append(orjson.dumps(SEED_TICKET))
    for body in bodies:
        assert forwards(body)
        assert valid(INPUT, orjson.loads(body)), body


def test_every_sample_the_worker_refuses_is_refused_by_the_schema() -> None:
    for kind, body in invalid_events(7):
        assert not forwards(body), kind
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            continue  # not JSON at all: no schema applies
        assert not valid(INPUT, document), (kind, body)


def _mutations() -> list[tuple[str, dict[str, Any]]]:
    """Near misses on both sides of each rule, in both shapes."""
    event: dict[str, Any] = {"id": "e1", "data": copy.deepcopy(SEED_EVENT_DATA)}
    cases: list[tuple[str, dict[str, Any]]] = []

    def data(label: str, **changes: Any) -> None:
        changed = copy.deepcopy(event)
        for key, value in changes.items():
            if value is ...:
                changed["data"].pop(key)
            else:
                changed["data"][key] = value
        cases.append((label, changed))

    def ticket(label: str, **changes: Any) -> None:
        changed = copy.deepcopy(SEED_TICKET)
        for key, value in changes.items():
            if value is ...:
                changed.pop(key)
            else:
                changed[key.replace("from_", "from")] = value
        cases.append((label, changed))

    data("topic in mixed case", topic="InCiDeNt")
    data("topic not ASCII", topic="ıncıdent")
    data("topic unknown", topic="complaint")
    data("role lower case", author={"role": "channel"})
    data("role unknown", author={"role": "bot"})
    data("reference alias", reference={"type": "Order_Item_Id", "id": "1"})
    data("reference unknown", reference={"type": "invoice", "id": "1"})
    data("reference empty id", reference={"type": "offer", "id": ""})
    data("reference null", reference=None)
    data("seller id with a trailing newline", seller_id="4711\n")
    data("seller id 50", seller_id="s" * 50)
    data("seller id 51", seller_id="s" * 51)
    data("seller id a number", seller_id=4711)
    data("ticket id 256", ticket_id="t" * 256)
    data("ticket id 257", ticket_id="t" * 257)
    data("created_at with offset", created_at="2023-11-07T05:31:56.5+01:00")
    data("created_at lower-case t and z", created_at="2023-11-07t05:31:56z")
    data("created_at without offset", created_at="2023-11-07T05:31:56")
    data("created_at hour 24", created_at="2023-11-07T24:00:00Z")
    data("created_at a leap second", created_at="2016-12-31T23:59:60Z")
    data("created_at a date", created_at="2023-11-07")
    data("created_at Arabic-Indic digits", created_at="٢٠٢٣-11-07T05:31:56Z")
    data("subject empty", subject="")
    data("subject 1024", subject="s" * 1024)
    data("message 1025", message="m" * 1025)
    data("author name null", author={"role": "buyer", "name": None})
    data("author name 101", author={"role": "buyer", "name": "n" * 101})
    data("reply_requested a string", reply_requested="yes")
    data("reply_requested false", reply_requested=False)
    data("ten attachments", attachments=[{"filename": "a.png", "content_type": "image/png"}] * 10)
    data("eleven attachments", attachments=[{"filename": "a.png", "content_type": "x/y"}] * 11)
    data("attachment without a type", attachments=[{"filename": "a.png"}])
    data("attachments null", attachments=None)
    data("no subject", subject=...)
    data("no author", author=...)
    data("unknown key", colour="red")
    cases.append(("data not an object", {"data": "ticket"}))
    cases.append(("data null", {"data": None}))
    cases.append(("an empty object", {}))
    ticket("ticket as is")
    ticket("ticket topic lower case", topic="question")
    ticket("ticket role lower case", from_={"role": "buyer"})
    ticket("ticket reference alias", reference={"type": "order_id", "id": "1"})
    ticket("ticket replyRequested a string", replyRequested="true")
    ticket("ticket without a message", message=...)
    ticket("ticket sellerId a number", sellerId=4711)
    ticket("ticket attachment contentType missing", attachment=[{"filename": "a.png"}])
    return cases


@pytest.mark.parametrize(("label", "document"), _mutations(), ids=[m[0] for m in _mutations()])
def test_the_schema_and_the_worker_agree_on_near_misses(
    label: str, document: dict[str, Any]
) -> None:
    assert valid(INPUT, document) == forwards(orjson.dumps(document)), label


# --- what the real worker writes into the DLQ and the delay queues -------------------


async def test_dead_letter_and_delay_copies_match_their_header_schemas(
    start_worker: StartWorker, emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    emulator.inject("ticket", 422, count=1)
    await start_worker(worker_retry_delays=(600.0,), scx_retry_attempts=1)
    await publish(channel, names, [b"not json", orjson.dumps({"data": {}}), event(1)])
    dead = await collect(channel, names.dlq, 3)
    dlq_headers = schema("dead-letter.headers.schema.json")
    kinds = set()
    for message in dead:
        headers = dict(message.headers or {})
        dlq_headers.validate(headers)
        kinds.add(headers["x-error-kind"])
    assert kinds == {"malformed", "invalid", "rejected"}

    emulator.inject("ticket", 503, count=1)
    await publish(channel, names, [event(2)])
    [delayed] = await collect(channel, names.retry(600), 1)
    schema("retry.headers.schema.json").validate(dict(delayed.headers or {}))
