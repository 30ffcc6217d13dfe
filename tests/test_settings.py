"""Settings in-process: the masker, secret files and where a value came from (the CLI tests run the program)."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.settings import ConfigError, Settings, load_settings, mask_url, read_secret_file, shown_value


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://gw:8080/?api_key=sk-bf-1", "https://gw:8080/?***"),
        ("https://user:pw@gw:8080/v1", "https://***@gw:8080/v1"),
        ("http://sk-bf-1@gw", "http://***@gw"),
        ("https://gw/p#sk-bf-1", "https://gw/p#***"),
        ("https://u:p@gw/p?k=v#f", "https://***@gw/p?***#***"),
        ("gw:8080/?key=1", "gw:8080/?***"),
        ("https://gw:8080/base", "https://gw:8080/base"),
        ("https://gw/a@b", "https://gw/a@b"),  # an @ in the path is not userinfo
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_shown_value_never_shows_secret_fields_or_headers() -> None:
    assert shown_value("virtual_key", "sk-bf-1") == ""
    assert shown_value("extra_headers", {"X": "sk-bf-1"}) == ""
    assert shown_value("providers", ["openai", "https://gw/?k=sk"]) == ""
    assert shown_value("page_size", 5000) == "=5000"
    assert shown_value("bifrost_url", "https://gw/?k=sk-bf-1") == "='https://gw/?***'"


@pytest.mark.parametrize(
    ("content", "value"),
    [(b"sk-bf-1\n", "sk-bf-1"), (b"sk-bf-1", "sk-bf-1"), (b"sk-bf-1\r\n", "sk-bf-1"), (b"  sk \n", "  sk ")],
)
def test_secret_file_strips_one_line_end(tmp_path: Path, content: bytes, value: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    assert read_secret_file(path) == value


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "is empty"), (b"\n", "is empty"), (b"a\nb\n", "more than one line"), (b"\xff", "not UTF-8"),
     (b"x" * 70_000, "larger than")],
)  # fmt: skip
def test_secret_file_refusals_say_why_not_what(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=reason) as info:
        read_secret_file(path)
    assert content.decode("utf-8", "replace")[:20].strip() not in str(info.value) or not content.strip()


def test_secret_files_fill_the_secrets_and_reread_picks_up_a_rotation(tmp_path: Path) -> None:
    vk, pw = tmp_path / "vk", tmp_path / "pw"
    vk.write_text("sk-bf-first\n")
    pw.write_text("pw-first\n")
    settings = Settings(virtual_key_file=vk, basic_auth_username="admin", basic_auth_password_file=pw)
    assert settings.virtual_key is not None and settings.virtual_key.get_secret_value() == "sk-bf-first"
    assert "sk-bf-first" in settings.secret_values()
    vk.write_text("sk-bf-second\n")
    fresh = settings.reread_secret_files()
    assert fresh.virtual_key is not None and fresh.virtual_key.get_secret_value() == "sk-bf-second"
    assert settings.virtual_key.get_secret_value() == "sk-bf-first"  # frozen: the old settings are unchanged
    vk.write_text("")
    with pytest.raises(ConfigError, match=r"invalid setting virtual_key_file: .* is empty"):
        fresh.reread_secret_files()


def test_file_and_inline_value_are_exclusive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("sk-bf-token\n")
    monkeypatch.setenv("BIFROST_EXPORTER_BEARER_TOKEN_FILE", str(token))
    with pytest.raises(ConfigError) as info:
        load_settings({"bearer_token": "sk-bf-inline"})
    message = str(info.value)
    assert message.startswith(
        "invalid setting bearer_token_file (from environment BIFROST_EXPORTER_BEARER_TOKEN_FILE)"
    )
    assert "sk-bf-inline" not in message and "sk-bf-token" not in message


def test_telemetry_path_must_be_a_free_path() -> None:
    assert Settings(telemetry_path="/exporter/metrics").telemetry_path == "/exporter/metrics"
    for bad in ("metrics", "/healthz", "/", "/m?x=1", "/a b"):
        with pytest.raises(ValueError, match="telemetry_path"):
            Settings(telemetry_path=bad)
