"""The README and the docs site: links that resolve, and reference pages that match the code.

- every relative link in README.md names a file or directory of the repository, and every
  ``#anchor`` in one names a heading (or an explicit ``{#id}``) of the Markdown file it points
  into; the README stays a short page;
- docs/reference/ is what ``make reference`` (``scripts/generate.py docs``) generates from the
  settings class, the argument parser, the Prometheus registry and the alert rules, so a
  setting, option, metric or alert added without regenerating fails here;
- the ``--check`` mode really notices a stale page (run against a copy in a temporary
  directory, never against the committed files).

``make docs`` (``mkdocs build --strict``) checks the links between the site's own pages.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
GENERATE = ROOT / "scripts" / "generate.py"

_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)
_EXPLICIT_ID = re.compile(r"\{#([\w-]+)\}\s*$")
_HTML_ID = re.compile(r"<a id=\"([\w-]+)\"")


def slug(heading: str) -> str:
    """The id Python-Markdown's ``toc`` extension (and so MkDocs) gives a heading."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(markdown: str) -> set[str]:
    """Every id a link may point to in a Markdown page."""
    text = _FENCE.sub("", markdown)
    found = set(_HTML_ID.findall(text))
    for heading in _HEADING.findall(text):
        explicit = _EXPLICIT_ID.search(heading)
        found.add(explicit.group(1) if explicit else slug(heading))
    return found


def relative_links(markdown: str) -> list[str]:
    text = _FENCE.sub("", markdown)
    return [
        target
        for target in _LINK.findall(text)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_every_relative_link_in_the_readme_resolves() -> None:
    readme = README.read_text()
    links = relative_links(readme)
    assert len(links) > 20, "the README should link into the docs"
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (README.parent / path).resolve() if path else README
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and anchor not in anchors(target.read_text()):
            broken.append(f"{link}: no heading with id {anchor!r} in {target.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_short_page() -> None:
    lines = README.read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move the details into docs/"


def test_slugs_are_those_mkdocs_gives() -> None:
    assert slug("`scx-forwarder check`") == "scx-forwarder-check"
    assert slug("Pacing against the emulator's rate limit") == (
        "pacing-against-the-emulators-rate-limit"
    )
    assert slug("Attachments: 16 MiB files through the worker") == (
        "attachments-16-mib-files-through-the-worker"
    )
    assert anchors("## Long failures {#delay-stage}\n") == {"delay-stage"}


def test_the_reference_pages_are_generated_from_the_code() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATE), "docs", "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr + "(run `make reference` and commit the pages)"


@pytest.fixture
def generate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """scripts/generate.py, writing its reference pages under ``tmp_path`` instead of docs/."""
    spec = importlib.util.spec_from_file_location("generate_for_test", GENERATE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "REFERENCE", tmp_path / "docs" / "reference")
    return module


def test_a_stale_reference_page_fails_the_check_and_names_the_fix(
    generate: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert generate.main(["docs"]) == 0
    assert generate.main(["docs", "--check"]) == 0
    settings = tmp_path / "docs" / "reference" / "settings.md"
    settings.write_text(settings.read_text().replace("`AMQP_PREFETCH`", "`AMQP_PREFETCH_OLD`"))
    capsys.readouterr()

    assert generate.main(["docs", "--check"]) == 1
    assert "docs/reference/settings.md is out of date: run `make reference`" in (
        capsys.readouterr().err
    )


def test_the_reference_pages_list_every_setting_command_metric_and_alert(
    generate: ModuleType,
) -> None:
    from prometheus_client import REGISTRY

    from worker.cli import _parser
    from worker.core.settings import Settings

    pages = {path.name: text for path, text in generate.reference_pages().items()}
    for name, field in Settings.model_fields.items():
        assert f"| `{name.upper()}` |" in pages["settings.md"]
        assert field.description
    for command in ("run", "events", "check", "emulator", "publish", "sample", "dlq replay"):
        assert f"`{command}`" in pages["cli.md"]
    parsers = [_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
            elif not isinstance(action, argparse._HelpAction):
                for option in action.option_strings:
                    assert f"`{option}" in pages["cli.md"], option
    assert "--routing-key" in pages["cli.md"]
    exposed = {
        metric.name for metric in REGISTRY.collect() if metric.name.startswith("scx_forwarder_")
    }
    for name in exposed:
        assert f"`{name}" in pages["metrics.md"], name
    assert "ScxForwarderDeadLetterQueueGrowing" in pages["alerts.md"]
