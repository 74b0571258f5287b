"""worker.forward.attachments.names: one upload name per file, deterministic, unique."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.forward.attachments.content_types import (
    allowed_type,
    extension_for,
    media_type,
    same_kind,
)
from worker.forward.attachments.names import (
    UPLOAD_NAME,
    NameRequest,
    UnusableName,
    assign_names,
    safe_filename,
)


@pytest.mark.parametrize(
    ("original", "content_type", "expected"),
    [
        ("RedDot.png", "image/png", "RedDot.png"),
        ("Red Dot (1).png", "image/png", "Red_Dot_1_.png"),
        ("Müller Straße.pdf", "application/pdf", "Muller_Strasse.pdf"),
        ("crème brûlée.JPG", "image/jpeg", "creme_brulee.JPG"),
        ("C:\\Users\\dave\\scan.png", "image/png", "scan.png"),
        ("/var/tmp/../x/scan.png", "image/png", "scan.png"),
        ("archive.tar.gz", "image/png", "archive_tar.gz"),
        ("under_score.txt", "text/plain", "under_score.txt"),
        # No usable extension: one from the declared type, the whole name is the stem.
        ("scan", "image/jpeg", "scan.jpg"),
        ("report.final version", "application/pdf", "report_final_version.pdf"),
        ("notes.", "text/plain; charset=utf-8", "notes_.txt"),
        ("sheet.verylongextension", "application/vnd.ms-excel", "sheet_verylongextension.xls"),
        ("photo.pñg", "image/png", "photo.png"),
        ("photo.p g", "image/png", "photo_p_g.png"),
        ("drawing", "image/x-portable-pixmap", "drawing.portable"),
        ("Brief", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
         "Brief.docx"),
        # Another script: its digits stay, or the stem becomes "file".
        ("дом.pdf", "application/pdf", "file.pdf"),
        ("дом 2.pdf", "application/pdf", "_2.pdf"),
        ("写真.png", "image/png", "file.png"),
    ],
)  # fmt: skip
def test_safe_filename(original: str, content_type: str, expected: str) -> None:
    assert safe_filename(original, content_type) == expected
    assert UPLOAD_NAME.fullmatch(expected)


@pytest.mark.parametrize(
    "original", ["???.png", ".png", "(  ).pdf", "📎.png", "a\nb.png", "ok\x00.png", "\x7f.txt"]
)
def test_unusable_names_are_refused(original: str) -> None:
    with pytest.raises(UnusableName):
        safe_filename(original, "image/png")


def test_a_long_stem_is_cut() -> None:
    name = safe_filename("x" * 300 + ".png", "image/png")
    assert name == "x" * 100 + ".png"


def test_names_are_unique_in_a_ticket_ignoring_case_and_keep_metadata_names() -> None:
    requests = [
        NameRequest("a.png", "image/png", uploaded=True),
        NameRequest("A.PNG", "image/png", uploaded=True),
        NameRequest("a (.png", "image/png", uploaded=True),
        NameRequest("b.png", "image/png", uploaded=False),  # metadata only: kept, reserved
        NameRequest("b.png", "image/png", uploaded=True),
        NameRequest("Red_Dot_1_.png", "image/png", uploaded=False),
        NameRequest("Red Dot (1).png", "image/png", uploaded=True),
        NameRequest("A_2.png", "image/png", uploaded=True),
    ]
    assert assign_names(requests) == [
        "a.png",
        "A_2.PNG",
        "a_.png",
        "b.png",
        "b_2.png",
        "Red_Dot_1_.png",
        "Red_Dot_1__2.png",
        "A_2_2.png",
    ]


def test_metadata_only_names_stay_verbatim() -> None:
    requests = [NameRequest("Red Dot (1).png", "image/png", uploaded=False)]
    assert assign_names(requests) == ["Red Dot (1).png"]


def test_the_first_unusable_name_carries_its_index() -> None:
    requests = [
        NameRequest("ok.png", "image/png", uploaded=True),
        NameRequest("???.png", "image/png", uploaded=False),  # not uploaded: not checked
        NameRequest("???.png", "image/png", uploaded=True),
    ]
    with pytest.raises(UnusableName) as info:
        assign_names(requests)
    assert info.value.index == 2


@settings(deadline=None)  # a loaded CI machine must not fail a pure function on time
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=40), st.sampled_from(["image/png", "text/plain"])),
        min_size=1,
        max_size=10,
    )
)
def test_every_name_fits_the_upload_pattern_is_unique_and_deterministic(
    items: list[tuple[str, str]],
) -> None:
    requests = [NameRequest(name, ctype, uploaded=True) for name, ctype in items]
    try:
        names = assign_names(requests)
    except UnusableName:
        return
    assert all(UPLOAD_NAME.fullmatch(name) for name in names)
    assert len({name.casefold() for name in names}) == len(names)
    assert assign_names(requests) == names
    assert all(len(name) <= 256 for name in names)


def test_content_types() -> None:
    assert media_type(" Text/Plain ; charset=UTF-8") == "text/plain"
    for ok in ["text/plain", "application/pdf", "image/png", "IMAGE/SVG+XML", "image/x-icon"]:
        assert allowed_type(ok), ok
    for bad in ["application/octet-stream", "text/html", "image", "image/", "image/a b", ""]:
        assert not allowed_type(bad), bad
    assert same_kind("image/png", "image/jpeg")
    assert same_kind("text/plain", "text/plain; charset=utf-8")
    assert not same_kind("application/pdf", "text/plain")
    assert extension_for("application/octet-stream") == "bin"
