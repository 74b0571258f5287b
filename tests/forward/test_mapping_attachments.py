"""decode_message: attachment sources in the input contract (docs/guides/attachments.md)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from tests.support.examples import SEED_EVENT_DATA, SEED_TICKET
from worker.core.errors import InvalidTicket
from worker.forward.attachments import AttachmentSource
from worker.forward.identity import MessageIdentity
from worker.forward.mapping import Mapper, decode_message, message_mapper

URL = "https://files.example.com/tickets/4711/red.png?X-Amz-Signature=s3cr3t"
EVENT_ID = "evt-1"


def tag(name: str) -> str:
    """The upload name of ``name`` in the message ``EVENT_ID`` (its discriminator added)."""
    stem, _, extension = name.rpartition(".")
    return f"{stem}_{MessageIdentity(EVENT_ID, 'event').discriminator}.{extension}"


def event(*attachments: dict[str, Any]) -> bytes:
    data = copy.deepcopy(SEED_EVENT_DATA) | {"attachments": list(attachments)}
    return orjson.dumps({"id": EVENT_ID, "data": data})


def invalid(raw: bytes, mapper: Mapper | None = None) -> InvalidTicket:
    with pytest.raises(InvalidTicket) as info:
        decode_message(raw, mapper=message_mapper(mapper) if mapper else None)
    return info.value


def sent_attachments(raw: bytes, mapper: Mapper | None = None) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = orjson.loads(
        decode_message(raw, mapper=message_mapper(mapper) if mapper else None).ticket.to_json()
    )["attachment"]
    return result


def test_without_sources_nothing_changes() -> None:
    raw = event({"filename": "Red Dot (1).png", "content_type": "image/png"})
    decoded = decode_message(raw)
    assert decoded.files == ()
    assert sent_attachments(raw) == [{"filename": "Red Dot (1).png", "contentType": "image/png"}]
    assert decode_message(raw).ticket == decoded.ticket


def test_sources_become_files_and_the_ticket_names_them_by_their_upload_name() -> None:
    raw = event(
        {"filename": "Red Dot (1).png", "content_type": "image/png", "url": URL},
        {"filename": "note.txt", "content_type": "text/plain"},
        {"filename": "Bericht Müller", "content_type": "application/pdf", "content_base64": "QQ=="},
    )
    decoded = decode_message(raw)
    assert decoded.files == (
        AttachmentSource(0, tag("Red_Dot_1_.png"), "Red Dot (1).png", "image/png", "url", url=URL),
        AttachmentSource(
            2, tag("Bericht_Muller.pdf"), "Bericht Müller", "application/pdf", "base64",
            content_base64="QQ==",
        ),
    )  # fmt: skip
    # The ticket sends the same names the uploads will; no source key reaches the API body.
    assert sent_attachments(raw) == [
        {"filename": tag("Red_Dot_1_.png"), "contentType": "image/png"},
        {"filename": "note.txt", "contentType": "text/plain"},
        {"filename": tag("Bericht_Muller.pdf"), "contentType": "application/pdf"},
    ]


def test_a_source_url_stays_out_of_reprs() -> None:
    decoded = decode_message(event({"filename": "a.png", "content_type": "image/png", "url": URL}))
    assert "s3cr3t" not in repr(decoded)
    assert decoded.files[0].where == "https://files.example.com/tickets/4711/red.png"


def test_upload_names_are_unique_against_every_name_of_the_ticket() -> None:
    raw = event(
        {"filename": "a.png", "content_type": "image/png"},
        {"filename": "a.png", "content_type": "image/png", "content_base64": "QQ=="},
        {"filename": "A.png", "content_type": "image/png", "url": URL},
    )
    names = [a["filename"] for a in sent_attachments(raw)]
    assert names == ["a.png", tag("a_2.png"), tag("A_3.png")]
    assert [f.filename for f in decode_message(raw).files] == [tag("a_2.png"), tag("A_3.png")]


def test_both_sources_are_invalid() -> None:
    error = invalid(
        event(
            {"filename": "a.png", "content_type": "image/png"},
            {
                "filename": "b.png",
                "content_type": "image/png",
                "url": URL,
                "content_base64": "QQ==",
            },
        )
    )
    assert error.detail["errors"] == [
        {
            "loc": "data.attachments.1",
            "msg": "give at most one source: url or content_base64, not both",
            "type": "one_source",
        }
    ]
    assert "s3cr3t" not in repr(error.detail) + error.summary


@pytest.mark.parametrize(
    ("item", "loc", "kind"),
    [
        ({"url": 5}, "data.attachments.0.url", "string_type"),
        ({"url": ""}, "data.attachments.0.url", "string_too_short"),
        ({"content_base64": ""}, "data.attachments.0.content_base64", "string_too_short"),
        ({"content_base64": ["QQ=="]}, "data.attachments.0.content_base64", "string_type"),
    ],
)
def test_source_values_have_a_shape(item: dict[str, Any], loc: str, kind: str) -> None:
    error = invalid(event({"filename": "a.png", "content_type": "image/png", **item}))
    assert [(e["loc"], e["type"]) for e in error.detail["errors"]] == [(loc, kind)]


def test_null_sources_mean_metadata_only() -> None:
    raw = event({"filename": "a b.png", "content_type": "image/png", "url": None})
    assert decode_message(raw).files == ()
    assert sent_attachments(raw)[0]["filename"] == "a b.png"


def test_a_file_to_upload_must_declare_a_type_the_api_accepts() -> None:
    error = invalid(
        event(
            {"filename": "a.zip", "content_type": "application/zip"},  # metadata only: fine
            {"filename": "b.zip", "content_type": "application/zip", "url": URL},
            {"filename": "c.html", "content_type": "text/html", "content_base64": "QQ=="},
        )
    )
    assert [(e["loc"], e["type"]) for e in error.detail["errors"]] == [
        ("data.attachments.1.content_type", "content_type"),
        ("data.attachments.2.content_type", "content_type"),
    ]
    assert error.kind == "invalid"


def test_an_unusable_name_is_invalid() -> None:
    error = invalid(
        event(
            {"filename": "???.png", "content_type": "image/png"},  # not uploaded: kept
            {"filename": "???.png", "content_type": "image/png", "url": URL},
        )
    )
    assert error.detail["errors"] == [
        {
            "loc": "data.attachments.1.filename",
            "msg": "the filename has no letter or digit before its extension",
            "type": "unusable_filename",
        }
    ]
    assert error.summary.startswith("invalid event: data.attachments.1.filename: ")


def test_the_api_shape_stays_metadata_only() -> None:
    ticket = copy.deepcopy(SEED_TICKET)
    ticket["attachment"] = [
        {"filename": "Red Dot.png", "contentType": "image/png", "url": URL},
        {"filename": "b.png", "contentType": "image/png", "contentBase64": "QQ=="},
    ]
    decoded = decode_message(orjson.dumps(ticket))
    assert decoded.files == ()
    assert sent_attachments(orjson.dumps(ticket)) == [
        {"filename": "Red Dot.png", "contentType": "image/png"},
        {"filename": "b.png", "contentType": "image/png"},
    ]


def sourced_mapper(obj: dict[str, Any]) -> Mapping[str, Any]:
    return SEED_TICKET | {"attachment": obj["files"]}


def test_a_mapper_mapping_may_carry_sources_in_camel_case() -> None:
    files = [
        {"filename": "Red Dot.png", "contentType": "image/png", "url": URL},
        {"filename": "n.txt", "contentType": "text/plain", "contentBase64": "QQ=="},
        {"filename": "meta only.png", "contentType": "image/png"},
    ]
    raw = orjson.dumps({"id": EVENT_ID, "files": files})
    decoded = decode_message(raw, mapper=message_mapper(sourced_mapper))
    assert [(f.filename, f.kind, f.url, f.content_base64) for f in decoded.files] == [
        (tag("Red_Dot.png"), "url", URL, None),
        (tag("n.txt"), "base64", None, "QQ=="),
    ]
    assert [a.filename for a in decoded.ticket.attachment or ()] == [
        tag("Red_Dot.png"),
        tag("n.txt"),
        "meta only.png",
    ]


def test_mapper_source_errors_are_in_ticket_terms() -> None:
    files = [
        {"filename": "a.png", "contentType": "image/png"},
        {"filename": "b.png", "contentType": "image/png", "url": URL, "contentBase64": "QQ=="},
        {"filename": "c.exe", "contentType": "application/x-msdownload", "url": URL},
    ]
    error = invalid(orjson.dumps({"files": files[:2]}), sourced_mapper)
    assert error.detail["shape"] == "mapper"
    assert [(e["loc"], e["type"]) for e in error.detail["errors"]] == [
        ("attachment.1", "one_source")
    ]
    error = invalid(orjson.dumps({"files": [files[2]]}), sourced_mapper)
    assert [(e["loc"], e["type"]) for e in error.detail["errors"]] == [
        ("attachment.0.contentType", "content_type")
    ]
