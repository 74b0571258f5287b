"""deploy/ cannot be run here (no container engine); check it against the code instead."""

from __future__ import annotations

import re
from pathlib import Path

from worker.settings import Settings, load_settings

DEPLOY = Path(__file__).parent.parent / "deploy"
README = Path(__file__).parent.parent / "README.md"
SETTINGS = {name.upper() for name in Settings.model_fields}


def test_env_example_uses_only_real_settings_with_valid_values() -> None:
    pairs = dict(
        line.split("=", 1)
        for line in (DEPLOY / "forwarder.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(pairs) <= SETTINGS, set(pairs) - SETTINGS
    load_settings(**{key.lower(): value for key, value in pairs.items()})


def test_readme_documents_every_setting_in_its_table() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", README.read_text(), re.MULTILINE))
    assert documented == SETTINGS


def test_dockerfile_runs_as_non_root_in_exec_form() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.MULTILINE)
    assert 'ENTRYPOINT ["scx-forwarder"]' in text
    assert 'CMD ["run"]' in text
