"""Settings from the environment: defaults, validation messages, the refresh-token sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.core.settings import SANDBOX_URL, ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("AMQP_", "SCX_", "WORKER_", "LOG_")):
            monkeypatch.delenv(key)


def test_defaults_match_the_documented_contract() -> None:
    settings = load_settings()
    assert settings.amqp_url.get_secret_value() == "amqp://guest:guest@localhost:5672/"
    assert settings.amqp_exchange == "marketplace"
    assert settings.amqp_binding_key == "ticket.created"
    assert settings.amqp_queue == "scx.tickets"
    assert settings.dead_letter_queue == "scx.tickets.dlq"
    assert settings.amqp_queue_type == "quorum"
    assert settings.scx_api_url == SANDBOX_URL
    assert settings.scx_max_requests_per_minute == 60


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_QUEUE", "shop.tickets")
    monkeypatch.setenv("SCX_API_URL", "https://scx.api.jtl-software.com/")
    monkeypatch.setenv("SCX_MAX_REQUESTS_PER_MINUTE", "0")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.dead_letter_queue == "shop.tickets.dlq"
    assert settings.scx_api_url == "https://scx.api.jtl-software.com"
    assert settings.scx_max_requests_per_minute == 0
    assert settings.log_level == "DEBUG"


def test_every_bad_variable_is_named_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "http://secret-password@host/")
    monkeypatch.setenv("AMQP_PREFETCH", "0")
    monkeypatch.setenv("SCX_RETRY_BUDGET", "-5")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "AMQP_URL" in message
    assert "AMQP_PREFETCH" in message
    assert "SCX_RETRY_BUDGET" in message
    assert "secret-password" not in message


def test_refresh_token_from_variable_or_file(tmp_path: Path) -> None:
    assert load_settings(scx_refresh_token=" tok \n").refresh_token().get_secret_value() == "tok"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    settings = load_settings(scx_refresh_token_file=token_file)
    assert settings.refresh_token().get_secret_value() == "from-file"


def test_refresh_token_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is required"):
        load_settings().refresh_token()
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(scx_refresh_token_file=tmp_path / "missing").refresh_token()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load_settings(scx_refresh_token_file=tmp_path / "empty").refresh_token()
    with pytest.raises(ConfigError, match="not both"):
        load_settings(scx_refresh_token="a", scx_refresh_token_file=tmp_path / "empty")


def test_secrets_are_hidden_in_repr_and_the_redacted_url() -> None:
    settings = load_settings(
        amqp_url="amqp://svc:pa55word@rabbit:5672/prod", scx_refresh_token="refresh-me"
    )
    assert "pa55word" not in repr(settings)
    assert "refresh-me" not in repr(settings)
    assert settings.amqp_url_redacted == "amqp://svc:***@rabbit:5672/prod"


def test_a_list_of_nodes_keeps_its_order_and_every_password_secret() -> None:
    settings = load_settings(
        amqp_url=(
            "amqp://svc:first-pw@rabbit-1:5672/prod, amqp://svc:second-pw@rabbit-2:5672/prod,"
            "amqps://svc:thi%2Crd@rabbit-3:5671/prod"
        )
    )
    assert [url.host for url in settings.amqp_nodes] == ["rabbit-1", "rabbit-2", "rabbit-3"]
    assert settings.amqp_nodes[2].password == "thi,rd"
    assert settings.amqp_url_redacted == (
        "amqp://svc:***@rabbit-1:5672/prod,amqp://svc:***@rabbit-2:5672/prod,"
        "amqps://svc:***@rabbit-3:5671/prod"
    )
    for secret in ("first-pw", "second-pw", "thi,rd", "thi%2Crd"):
        assert secret not in repr(settings)
        assert secret not in settings.scrub(f"failed: {secret} refused")


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("amqp://u:ok@a:5672/,http://u:secret-pw@b/", "URL 2 of 2 must look like"),
        ("amqp://u:secret-pw@a/prod,amqp://u:secret-pw@b/test", "same virtual host"),
        (" , ", "must look like"),
    ],
)
def test_a_bad_node_in_the_list_is_named_by_position_never_by_value(
    value: str, complaint: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(amqp_url=value)
    assert complaint in str(raised.value)
    assert "secret-pw" not in str(raised.value)
