"""``make reliability`` rewrites docs/RELIABILITY.md and keeps what follows its own part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.reliability.report import main, page

RESULTS: dict[str, Any] = {
    "run": {"started": "2026-12-08 05:00 UTC", "machine": "x86_64", "python": "3.11"},
    "scenarios": {
        "test_one": {"title": "One scenario", "passed": True, "wall_s": 1.5, "figures": {}},
    },
}
CONVERSATIONS = """## Conversations: kill -9 between a follow-up's ticket call and its upload

Written by hand.

```
## not a heading: inside a code block
```
"""
SOAK = """## Soak runs (`make soak`)

### Seed 1, 10 minutes: **passed**

![chart](soak.png)
"""


def test_a_rerun_keeps_every_section_after_the_generated_part(tmp_path: Path) -> None:
    """The conversations and soak sections survive a re-render, in order, byte for byte."""
    old = dict(RESULTS, scenarios={"test_old": {"title": "Old scenario", "passed": False}})
    target = tmp_path / "RELIABILITY.md"
    target.write_text(page(old) + "\n" + CONVERSATIONS + "\n" + SOAK, encoding="utf-8")
    results = tmp_path / "results.json"
    results.write_text(
        '{"run": {"started": "now"}, "scenarios": {"test_one": '
        '{"title": "One scenario", "passed": true, "wall_s": 1.5}}}',
        encoding="utf-8",
    )

    assert main([str(results), str(target)]) == 0

    text = target.read_text(encoding="utf-8")
    assert "### One scenario" in text
    assert "Old scenario" not in text
    assert text.endswith(CONVERSATIONS + "\n" + SOAK)
    assert text.count("## Per scenario") == 1
    assert text.index("### One scenario") < text.index("## Conversations")


def test_a_first_render_and_a_page_of_someone_else_keep_nothing(tmp_path: Path) -> None:
    """No page yet, or a page without the generated part: only the rendered part is written."""
    assert page(RESULTS, "") == page(RESULTS, "# Notes\n\n## Mine\n\ntext\n")
    target = tmp_path / "RELIABILITY.md"
    results = tmp_path / "results.json"
    results.write_text('{"scenarios": {}}', encoding="utf-8")

    assert main([str(results), str(target)]) == 0
    assert target.read_text(encoding="utf-8").startswith("# Reliability")


def test_the_real_page_keeps_its_conversations_and_soak_sections() -> None:
    """Re-rendering docs/RELIABILITY.md keeps its hand-written sections after the table."""
    existing = Path("docs/RELIABILITY.md").read_text(encoding="utf-8")
    rendered = page(RESULTS, existing)
    for heading in ("## Conversations:", "## Soak runs"):
        assert heading in existing
        assert existing[existing.index(heading) :] in rendered
