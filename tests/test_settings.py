"""Settings in-process: what passes validation can be used, what cannot is refused naming the setting (never the
value), secret files and key directories, where a value came from (the CLI tests run the program)."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from exporter.client import BifrostClient
from exporter.settings import (
    DEFAULT_PROVIDERS,
    ConfigError,
    Settings,
    load_settings,
    mask_url,
    read_secret_file,
    shown_value,
)
from tests.test_client import Gateway
from tests.test_webconfig import Pki

SECRET = "sk-bf-SETTINGSSECRET-3c9e1a"
TOKEN = "admin-SETTINGSTOKEN-5b7d20"  # a bearer token (an admin session): an sk-bf- one is a key, refused


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_settings refuses unknown BIFROST_EXPORTER_* variables: none may leak in from the test runner."""
    for key in list(os.environ):
        if key.upper().startswith("BIFROST_EXPORTER_"):
            monkeypatch.delenv(key)


def leaked(secret: str, text: str, window: int = 8) -> bool:
    """Whether any `window` consecutive characters of the secret appear in text."""
    return any(secret[i : i + window] in text for i in range(len(secret) - window + 1))


# --- masking ------------------------------------------------------------------------------------------------------


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
        ("http://admin:s3cret", "http://admin:***"),  # a password whose '@' was forgotten reads as a port
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("http://[::1]/x", "http://[::1]/x"),
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


# --- bifrost_url: what validates can be used (issue 19, item 12) ------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h:abc", "port that is not a number"),
        ("http://h:99999", "port outside 1-65535"),
        ("http://h:0", "port outside 1-65535"),
        ("http://h:", "empty port"),
        ("http://h:-1", "port that is not a number"),
        ("http://h:８０", "port that is not a number"),
        ("http://", "no host"),
        ("http://:8080", "no host"),
        ("http://a..b", "malformed host name"),
        ("http://-gw", "malformed host name"),
        ("http://gw name", "whitespace"),
        ("http://bücher.example", "xn-- form"),
        ("http://1.2.3", "malformed IPv4"),
        ("http://300.1.1.1", "malformed IPv4"),
        ("http://[::1", "malformed host"),
        ("http://[zz::1]", "malformed IPv6"),
        ("http://[fe80::1%25eth0]", "zone id"),
        ("http://gw/a b", "whitespace"),
        ("http://gw/ü", "percent-encoded"),
        ("http://gw/%zz", "percent-encoded"),
        ("http://u:p@gw", "credentials"),
        ("http://gw/../admin", "'.' or '..' segment"),
        ("http://gw/bifrost/./x", "'.' or '..' segment"),
        ("http://gw/a/%2E%2e", "'.' or '..' segment"),
        ("http://gw?x=1", "without query or fragment"),
        ("ftp://gw", "http:// or https://"),
        ("gw:8080", "http:// or https://"),
    ],
)
def test_unusable_urls_are_refused_saying_which_part(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="invalid setting bifrost_url") as info:
        load_settings({"bifrost_url": url})
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("https://gw:8080/bifrost/", "https://gw:8080/bifrost"),
        ("HTTP://GW:80", "http://GW"),
        ("http://[0:0::1]:9000", "http://[::1]:9000"),
        ("http://bifrost_gateway:8080", "http://bifrost_gateway:8080"),  # compose service names have '_'
        ("https://xn--bcher-kva.example/p%20q", "https://xn--bcher-kva.example/p%20q"),
        ("http://10.0.0.1:65535/", "http://10.0.0.1:65535"),
    ],
)
def test_usable_urls_are_kept_in_one_spelling(url: str, stored: str) -> None:
    assert Settings(bifrost_url=url).bifrost_url == stored


_HOSTS = st.one_of(
    st.sampled_from(
        ["gw", "bifrost.internal", "127.0.0.1", "[::1]", "[fe80::1%eth0]", "1.2.3", "a..b", "-x", "x_y", "é.com",
         "", "h:1", "999.1.1.1", "gw.", "[::ffff:1.2.3.4]", "0", "a" * 64, "GW"]
    ),
    st.from_regex(r"[a-z0-9._\-\[\]:%@]{0,16}", fullmatch=True),
)  # fmt: skip
_PORTS = st.one_of(
    st.none(),
    st.sampled_from(
        ["", "0", "1", "80", "65535", "65536", "99999", "abc", "８０", "-1", "+80", "0080", " 80"]
    ),
    st.integers(-10, 100_000).map(str),
)
_PATHS = st.one_of(
    st.sampled_from(
        ["", "/", "/bifrost", "/a/b/", "/p%20q", "/p q", "/%zz", "/ü", "/a?b", "/a#b", "//", "/a:b@c"]
    ),
    st.text(max_size=8).map(lambda t: "/" + t),
)


@st.composite
def _urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "ftp", "", "http:"]))
    userinfo = draw(st.sampled_from(["", "", "", "u@", "u:p@"]))
    port = draw(_PORTS)
    return f"{scheme}://{userinfo}{draw(_HOSTS)}" + ("" if port is None else f":{port}") + draw(_PATHS)


PAGE = {"object": "list", "data": [], "has_more": False}


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Gateway, int]]]:
    """A plain and a TLS gateway on loopback, by scheme: every host name a URL can carry is connected to one of
    them, so what the client puts on the wire for that URL is recorded by a real server."""
    pki = Pki(tmp_path_factory.mktemp("pki"), "gateway")
    cert, key, _ = pki.issue("gateway")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    running = []
    out: dict[str, tuple[Gateway, int]] = {}
    for scheme, context in (("http", None), ("https", tls)):
        gw = Gateway(lambda seen: (200, PAGE))
        serving = gw.serve(context)
        running.append(serving)
        out[scheme] = (gw, int(next(serving).rsplit(":", 1)[1]))
    yield out
    for serving in running:
        for _ in serving:
            pass


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(url=st.one_of(_urls(), st.text(max_size=30)))
def test_any_url_that_validates_can_be_used_by_the_client(
    loopback: dict[str, tuple[Gateway, int]], url: str
) -> None:
    """The property of issue 19 item 12: no URL reaches the client that the client cannot use, and the client
    sends what the URL says (request target under its path, Host as written)."""
    try:
        config = Settings(bifrost_url=url, providers=["openai"], max_retries=0, tls_verify=False)
    except ValidationError as exc:
        refused = [e["loc"] for e in exc.errors()]
        assert refused == [("bifrost_url",)]
        return
    gateway = config.gateway
    gw, port = loopback[gateway.scheme]
    gw.seen.clear()
    connected: list[tuple[str, int]] = []

    def resolve(host: str, wanted: int) -> tuple[str, int]:
        connected.append((host, wanted))
        return "127.0.0.1", port

    async def scenario() -> Any:
        client = BifrostClient(config, resolve=resolve)
        try:
            return await client.list_batches("openai")
        finally:
            await client.aclose()

    result = asyncio.run(scenario())
    assert result.failure is None, result.failure
    assert connected == [(gateway.host, gateway.port)]
    assert [s.path for s in gw.seen] == [gateway.path + "/v1/batches"]
    host = f"[{gateway.host}]" if ":" in gateway.host else gateway.host
    default = {"http": 80, "https": 443}[gateway.scheme]
    assert gw.seen[0].headers["host"] == (host if gateway.port == default else f"{host}:{gateway.port}")


# --- header values: what validates can be sent (issue 19, item 11) ------------------------------------------------

# (content of a secret, the problem named): every one of these used to pass --check-config and crash the poll task.
UNSENDABLE = [
    ("\ufeff" + SECRET, "byte-order mark"),
    (SECRET + "\u00a0", "position 28"),
    (SECRET[:6] + "é" + SECRET[6:], "non-ASCII character at position 7"),
    (SECRET[:3] + "\x07" + SECRET[3:], "control character at position 4"),
    (SECRET + "\x7f", "control character"),
    (SECRET[:5] + "\u200b" + SECRET[5:], "position 6"),
    (" " + SECRET, "space or tab"),
    (SECRET + "\t", "space or tab"),
]


@pytest.mark.parametrize(("content", "problem"), UNSENDABLE)
@pytest.mark.parametrize("secret", ["virtual_key", "bearer_token"])
def test_a_header_secret_that_cannot_be_sent_is_refused_from_a_file_and_inline(
    tmp_path: Path, secret: str, content: str, problem: str
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content.encode() + b"\n")
    with pytest.raises(ConfigError) as from_file:
        load_settings({f"{secret}_file": str(path)})
    message = str(from_file.value)
    assert message.startswith(f"invalid setting {secret}_file (from the command line): '{path}' ")
    assert problem in message and not leaked(SECRET, message)
    with pytest.raises(ConfigError) as inline:
        load_settings({secret: content})
    assert str(inline.value).startswith(f"invalid setting {secret} (from the command line): ")
    assert problem in str(inline.value) and not leaked(SECRET, str(inline.value))


@pytest.mark.parametrize(
    ("content", "problem"),
    [("\ufeff" + SECRET, "byte-order mark"), (SECRET[:4] + "\x01" + SECRET[4:], "position 5"),
     (SECRET[:4] + "\u200b" + SECRET[4:], "position 5")],
)  # fmt: skip
def test_a_basic_auth_password_with_a_bom_or_control_character_is_refused(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "password"
    path.write_bytes(content.encode())
    with pytest.raises(ConfigError) as info:
        load_settings({"basic_auth_username": "admin", "basic_auth_password_file": str(path)})
    assert "invalid setting basic_auth_password_file" in str(info.value) and problem in str(info.value)
    assert not leaked(SECRET, str(info.value))


def test_basic_auth_carries_any_printable_text_but_a_colon_in_the_user() -> None:
    ok = Settings(basic_auth_username="jürgen", basic_auth_password=" pässwort mit Leerzeichen ")
    assert ok.basic_auth_token() is not None
    with pytest.raises(ValidationError, match="':'"):
        Settings(basic_auth_username="a:b", basic_auth_password="pw")


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"X-Org": "v\u00e9"}, "non-ASCII"),
        ({"X-Org": "\ufeffv"}, "byte-order mark"),
        ({"X-Org": "v "}, "space or tab"),
        ({"X-Org": "a\x00b"}, "control character"),
        ({"Host": "other"}, "written by the HTTP client"),
        ({"Content-Length": "5"}, "written by the HTTP client"),
        ({"X-Org": "a", "x-org": "b"}, "given twice"),
        ({"X Org": "a"}, "not a valid header name"),
    ],
)
def test_extra_headers_that_cannot_be_sent_are_refused(headers: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match="invalid setting extra_headers") as info:
        load_settings({"extra_headers": headers})
    assert problem in str(info.value)
    for value in headers.values():
        if len(value) > 2:
            assert value not in str(info.value)


@pytest.mark.parametrize(
    ("given_as", "expected"),
    [
        ("X-Team=llm", {"X-Team": "llm"}),
        (["X-Team=llm", "X-Env=a=b"], {"X-Team": "llm", "X-Env": "a=b"}),
        ('{"X-Team": "llm"}', {"X-Team": "llm"}),
        (['{"X-Team": "llm"}', "X-Env=prod"], {"X-Team": "llm", "X-Env": "prod"}),
        ("", {}),
    ],
)
def test_extra_headers_as_name_value_or_json(given_as: Any, expected: dict[str, str]) -> None:
    assert load_settings({"extra_headers": given_as}).extra_headers == expected


@pytest.mark.parametrize("given_as", ["X-Team", "=v", '{"X": 1', "[1]", ["X-A=1", "x-a=2"]])
def test_extra_headers_in_no_known_form_are_refused(given_as: Any) -> None:
    with pytest.raises(ConfigError, match="invalid setting extra_headers"):
        load_settings({"extra_headers": given_as})


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=24), st.sampled_from(["virtual_key", "bearer_token", "header", "password"]))
def test_any_secret_that_validates_can_be_sent_unchanged(value: str, where: str) -> None:
    """The client writes every header that validates as is, and h11 (the strictest HTTP/1.1 parser we have) reads
    back the same values."""
    choices: dict[str, dict[str, Any]] = {
        "virtual_key": {"virtual_key": value},
        "bearer_token": {"bearer_token": value},
        "header": {"extra_headers": {"X-Org-Token": value}},
        "password": {"basic_auth_username": "admin", "basic_auth_password": value},
    }
    values = choices[where]
    try:
        config = Settings(bifrost_url="http://gw.test", providers=["openai"], **values)
    except ValidationError:
        return
    # The head exactly as the client writes it, read by h11 (the strictest HTTP/1.1 parser we have).
    server = h11.Connection(h11.SERVER)
    server.receive_data(BifrostClient(config).request_head("/v1/batches?provider=openai"))
    request = server.next_event()
    assert isinstance(request, h11.Request)
    sent = {k.decode().lower(): v.decode() for k, v in request.headers}
    if where == "virtual_key":
        assert sent["x-bf-vk"] == value
    elif where == "bearer_token":
        assert sent["authorization"] == f"Bearer {value}"
    elif where == "header":
        assert sent["x-org-token"] == value


# --- secret files -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "value"),
    [(b"sk-bf-1\n", "sk-bf-1"), (b"sk-bf-1", "sk-bf-1"), (b"sk-bf-1\r\n", "sk-bf-1"), (b"  sk \n", "  sk ")],
)
def test_secret_file_strips_one_line_end_and_nothing_else(tmp_path: Path, content: bytes, value: str) -> None:
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
    config = Settings(virtual_key_file=vk, basic_auth_username="admin", basic_auth_password_file=pw)
    assert config.virtual_key is not None and config.virtual_key.get_secret_value() == "sk-bf-first"
    assert "sk-bf-first" in config.secret_values()
    vk.write_text("sk-bf-second\n")
    fresh = config.reread_secret_files()
    assert fresh.virtual_key is not None and fresh.virtual_key.get_secret_value() == "sk-bf-second"
    assert config.virtual_key.get_secret_value() == "sk-bf-first"  # frozen: the old settings are unchanged
    vk.write_text("")
    with pytest.raises(ConfigError, match=r"invalid setting virtual_key_file: .* is empty"):
        fresh.reread_secret_files()


def test_a_rotated_secret_that_cannot_be_sent_is_refused_on_reread(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    config = Settings(bearer_token_file=token)
    token.write_bytes(b"\xef\xbb\xbf" + TOKEN.encode() + b"\n")  # saved again by an editor that adds a BOM
    with pytest.raises(ConfigError) as info:
        config.reread_secret_files()
    assert str(info.value).startswith(
        f"invalid setting bearer_token_file: '{token}' starts with a byte-order mark"
    )
    assert not leaked(TOKEN, str(info.value))


def test_file_and_inline_value_are_exclusive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("admin-token\n")
    monkeypatch.setenv("BIFROST_EXPORTER_BEARER_TOKEN_FILE", str(token))
    with pytest.raises(ConfigError) as info:
        load_settings({"bearer_token": "admin-inline"})
    message = str(info.value)
    assert message.startswith(
        "invalid setting bearer_token_file (from environment BIFROST_EXPORTER_BEARER_TOKEN_FILE)"
    )
    assert "admin-inline" not in message and "admin-token" not in message


# --- virtual_key_dir (configuration contract v3) ----------------------------------------------------------------


def _mount_secret(root: Path, keys: dict[str, bytes]) -> Path:
    """A directory laid out as the kubelet mounts a Secret: `..data` → a timestamped dir, one link per key."""
    mount = root / "keys"
    data = mount / "..2026_12_06_10_00_00.000000001"
    data.mkdir(parents=True)
    for name, content in keys.items():
        (data / name).write_bytes(content)
    (mount / "..data").symlink_to(data.name)
    for name in keys:
        (mount / name).symlink_to(f"..data/{name}")
    return mount


def test_virtual_key_dir_reads_one_key_per_file_by_name(tmp_path: Path) -> None:
    mount = _mount_secret(
        tmp_path, {"team-b": b"sk-bf-bbbb\n", "team-a": b"sk-bf-aaaa", "team.c": b"sk-bf-cc\n"}
    )
    (mount / "sub").mkdir()  # not a regular file: not a key
    config = load_settings({"virtual_key_dir": str(mount)})
    keys = config.virtual_keys()
    assert [(name, key.get_secret_value()) for name, key in keys] == [
        ("team-a", "sk-bf-aaaa"),
        ("team-b", "sk-bf-bbbb"),
        ("team.c", "sk-bf-cc"),
    ]
    assert all(isinstance(key, SecretStr) for _, key in keys)
    assert {"sk-bf-aaaa", "sk-bf-bbbb", "sk-bf-cc"} <= set(config.secret_values())
    assert config.virtual_key is None
    assert "sk-bf" not in repr(config) and "sk-bf" not in str(config.masked())


def test_a_virtual_key_without_bifrosts_prefix_is_refused_naming_the_setting(tmp_path: Path) -> None:
    """Bifrost takes an x-bf-vk without sk-bf- for no key: the exporter would list keyless and call it a tenant."""
    with pytest.raises(
        ConfigError, match=r"invalid setting virtual_key.*: is not a Bifrost virtual key"
    ) as info:
        load_settings({"virtual_key": "tenant-a-secret-key"})
    assert not leaked("tenant-a-secret-key", str(info.value))
    path = tmp_path / "vk"
    path.write_text("Bearer sk-bf-aaaa\n")
    with pytest.raises(ConfigError, match=r"virtual_key_file.*is not a Bifrost virtual key") as info:
        load_settings({"virtual_key_file": str(path)})
    assert not leaked("sk-bf-aaaa", str(info.value))


# Every way but virtual_key* that Bifrost's governance reads a request's virtual key from (names and the sk-bf-
# prefix in any case, `Bearer` stripped; `x-bf-vk` whatever it holds), each with the setting the refusal names.
KEY_SENT_ELSEWHERE = [
    ({"bearer_token": SECRET}, "bearer_token"),
    ({"bearer_token": SECRET.upper()}, "bearer_token"),
    ({"bearer_token_file": "@file"}, "bearer_token_file"),
    ({"extra_headers": {"X-Api-Key": SECRET}}, "extra_headers['X-Api-Key']"),
    ({"extra_headers": {"x-goog-api-key": SECRET.upper()}}, "extra_headers['x-goog-api-key']"),
    ({"extra_headers": {"Authorization": f"Bearer {SECRET}"}}, "extra_headers['Authorization']"),
    ({"extra_headers": {"AUTHORIZATION": f"bearer  {SECRET}"}}, "extra_headers['AUTHORIZATION']"),
    ({"extra_headers": {"X-Bf-Vk": SECRET}}, "extra_headers['X-Bf-Vk']"),
    ({"extra_headers": {"x-bf-vk": "tenant-a-SETTINGSSECRET"}}, "extra_headers['x-bf-vk']"),
]


@pytest.mark.parametrize(
    ("values", "named"),
    KEY_SENT_ELSEWHERE,
    ids=["bearer_token", "bearer_token-upper", "bearer_token_file", "x-api-key", "x-goog-api-key",
         "authorization-bearer", "authorization-bearer-any-case", "x-bf-vk", "x-bf-vk-without-prefix"],
)  # fmt: skip
def test_a_virtual_key_sent_another_way_than_virtual_key_is_refused_naming_the_setting(
    tmp_path: Path, values: dict[str, Any], named: str
) -> None:
    """The gateway narrows every list to such a key's tenant, while the view (virtual_key* only) would say the
    whole account: refused at start, naming where the key was set and where it belongs, never the key."""
    if values.get("bearer_token_file") == "@file":
        token = tmp_path / "token"
        token.write_text(SECRET + "\n")
        values = {"bearer_token_file": str(token)}
        named = f"bearer_token_file (from the command line): '{token}'"
    with pytest.raises(ConfigError) as info:
        load_settings(values)
    message = str(info.value)
    setting = named.split("[", 1)[0]
    assert message.startswith(f"invalid setting {setting}")
    assert named in message
    assert "virtual_key, virtual_key_file or virtual_key_dir" in message
    for secret in (SECRET, SECRET.upper(), "tenant-a-SETTINGSSECRET"):
        assert not leaked(secret, message)


def test_a_header_or_token_that_is_not_a_virtual_key_is_kept() -> None:
    """Only what the gateway reads as a key is refused: a proxy's API key, an admin session token and a login
    in Authorization still reach the gateway as configured."""
    config = load_settings(
        {
            "virtual_key": SECRET,
            "bearer_token": TOKEN,
            "extra_headers": {
                "X-Api-Key": "proxy-key",
                "x-goog-api-key": "AIza-project",
                "X-Team": "sk-bf-like",
            },
        }
    )
    assert config.bearer_token is not None and config.bearer_token.get_secret_value() == TOKEN
    assert config.extra_headers["X-Api-Key"] == "proxy-key"
    assert [name for name, _ in config.virtual_keys()] == ["default"]
    assert load_settings({"extra_headers": {"Authorization": "Basic c2stYmYtYWFhYQ=="}}).extra_headers
    assert load_settings({"extra_headers": {"Authorization": f"Token {SECRET}"}}).extra_headers


def test_virtual_keys_of_the_single_key_settings(tmp_path: Path) -> None:
    assert Settings().virtual_keys() == ()
    ((name, key),) = Settings(virtual_key="sk-bf-inline").virtual_keys()
    assert name == "default" and key.get_secret_value() == "sk-bf-inline"
    path = tmp_path / "bifrost-vk"
    path.write_text("sk-bf-file\n")
    ((name, key),) = Settings(virtual_key_file=path).virtual_keys()
    assert name == "bifrost-vk" and key.get_secret_value() == "sk-bf-file"


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({}, "holds no key file"),
        ({"a": b""}, "'{dir}/a' is empty"),
        ({"a": b"\xef\xbb\xbf" + SECRET.encode()}, "'{dir}/a' starts with a byte-order mark"),
        ({"a": SECRET.encode() + b"\xc2\xa0"}, "'{dir}/a' has a non-ASCII character at position 28"),
        ({"a": b"\xff" + SECRET.encode()}, "'{dir}/a' is not UTF-8 text"),
        ({"a": SECRET.encode(), "b": SECRET.encode() + b"\n"}, "'{dir}/b' holds the same key as 'a'"),
        ({"a b": SECRET.encode()}, "a key's name"),
        (
            {"a": b"sk-bf-aaaa", "b": b"tenant-b-key"},
            "'{dir}/b' is not a Bifrost virtual key (they begin with sk-bf-",
        ),
    ],
)
def test_virtual_key_dir_refusals_name_the_file_never_the_key(
    tmp_path: Path, keys: dict[str, bytes], problem: str
) -> None:
    directory = tmp_path / "keys"
    directory.mkdir()
    for name, content in keys.items():
        (directory / name).write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_settings({"virtual_key_dir": str(directory)})
    message = str(info.value)
    assert message.startswith("invalid setting virtual_key_dir (from the command line): ")
    assert problem.format(dir=directory) in message
    assert not leaked(SECRET, message)


def test_virtual_key_dir_link_to_nothing_is_refused_not_skipped(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / "a").write_text(SECRET)
    (directory / "b").symlink_to(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"cannot read '.*/keys/b': No such file"):
        load_settings({"virtual_key_dir": str(directory)})


def test_virtual_key_dir_is_exclusive_and_must_be_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / "a").write_text(SECRET)
    with pytest.raises(ConfigError, match=r"virtual_key_dir .*: virtual_key is set too"):
        load_settings({"virtual_key_dir": str(directory), "virtual_key": "sk-bf-other"})
    with pytest.raises(ConfigError, match=r"virtual_key_dir .*: virtual_key_file is set too"):
        load_settings({"virtual_key_dir": str(directory), "virtual_key_file": str(directory / "a")})
    with pytest.raises(ConfigError, match=r"invalid setting virtual_key_dir=.*not a directory"):
        load_settings({"virtual_key_dir": str(directory / "a")})


def test_virtual_key_dir_is_reread_and_a_bad_new_key_keeps_the_old_ones(tmp_path: Path) -> None:
    mount = _mount_secret(tmp_path, {"a": b"sk-bf-aaaa\n"})
    config = Settings(virtual_key_dir=mount)
    (mount / "b").write_text("sk-bf-bbbb\n")
    fresh = config.reread_secret_files()
    assert [n for n, _ in fresh.virtual_keys()] == ["a", "b"]
    assert [n for n, _ in config.virtual_keys()] == ["a"]  # the running settings are untouched
    assert "sk-bf-bbbb" in fresh.secret_values()
    (mount / "c").write_bytes(b"sk-bf-\xc3\xa9\n")
    with pytest.raises(ConfigError, match=r"invalid setting virtual_key_dir: '.*/c' has a non-ASCII"):
        fresh.reread_secret_files()
    assert [n for n, _ in fresh.virtual_keys()] == ["a", "b"]


# --- cost settings (configuration contract v3) ------------------------------------------------------------------


def test_cost_metrics_needs_the_admin_login(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIFROST_EXPORTER_COST_METRICS", "true")
    with pytest.raises(ConfigError) as info:
        load_settings({"virtual_key": "sk-bf-only-a-vk"})
    assert str(info.value).startswith(
        "invalid setting cost_metrics (from environment BIFROST_EXPORTER_COST_METRICS): needs the gateway's admin"
    )
    assert load_settings({"bearer_token": "tok-1234"}).cost_metrics is True
    assert load_settings({"basic_auth_username": "a", "basic_auth_password": "b"}).cost_metrics is True


def test_cost_horizon_must_be_positive_and_finite() -> None:
    assert Settings().cost_horizon_seconds == 86400
    assert Settings().cost_metrics is False
    for bad in (0, -1, "inf", "nan"):
        with pytest.raises(ConfigError, match="cost_horizon_seconds"):
            load_settings({"cost_horizon_seconds": bad})


@pytest.mark.parametrize("name", ["poll_interval_seconds", "request_timeout_seconds", "stale_after_seconds",
                                  "resync_interval_seconds", "max_requests_per_second"])  # fmt: skip
def test_no_duration_or_rate_may_be_infinite(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: "inf"})


# --- logging settings and deprecated spellings (issue 22, item 3) -------------------------------------------------


def test_log_settings_take_promslogs_values_and_the_v2_ones_with_a_deprecation() -> None:
    config = load_settings({"log_level": "warn", "log_format": "json"})
    assert (config.log_level, config.log_format, config.deprecations()) == ("warn", "json", ())
    assert Settings().log_format == "logfmt" and Settings().log_level == "info"
    old = load_settings({"log_level": "WARNING", "log_format": "console"})
    assert (old.log_level, old.log_format) == ("warn", "logfmt")
    assert old.deprecations() == (
        "log_level 'warning' is deprecated and will be removed; use 'warn'",
        "log_format 'console' is deprecated and will be removed; use 'logfmt'",
    )
    assert load_settings({"log_format": "auto"}).log_format == "json"
    with pytest.raises(ConfigError, match="invalid setting log_level='loud'"):
        load_settings({"log_level": "loud"})


# --- unknown names (issue 22, item 3) ---------------------------------------------------------------------------


def test_unknown_environment_variables_are_refused_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIFROST_EXPORTER_WEB_LISTEN_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("BIFROST_EXPORTER_POLL_INTERVAL", "5")
    monkeypatch.setenv("BIFROST_EXPORTER_ZZZ", "1")
    monkeypatch.setenv("BIFROST_EXPORTER_PAGE_SIZE", "10")  # known: fine
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        "unknown environment variable BIFROST_EXPORTER_POLL_INTERVAL "
        "(did you mean BIFROST_EXPORTER_POLL_INTERVAL_SECONDS?); "
        "unknown environment variable BIFROST_EXPORTER_WEB_LISTEN_ADDRESS "
        "(did you mean BIFROST_EXPORTER_LISTEN_ADDRESS?); "
        "unknown environment variable BIFROST_EXPORTER_ZZZ"
    )


def test_service_link_variables_of_a_neighbour_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Service named bifrost-exporter in the namespace makes the kubelet inject these into every pod."""
    for name, value in {
        "BIFROST_EXPORTER_SERVICE_HOST": "10.0.0.7",
        "BIFROST_EXPORTER_SERVICE_PORT": "9877",
        "BIFROST_EXPORTER_SERVICE_PORT_METRICS": "9877",
        "BIFROST_EXPORTER_PORT": "tcp://10.0.0.7:9877",
        "BIFROST_EXPORTER_PORT_9877_TCP": "tcp://10.0.0.7:9877",
        "BIFROST_EXPORTER_PORT_9877_TCP_PROTO": "tcp",
        "BIFROST_EXPORTER_PORT_9877_TCP_PORT": "9877",
        "BIFROST_EXPORTER_PORT_9877_TCP_ADDR": "10.0.0.7",
    }.items():
        monkeypatch.setenv(name, value)
    assert load_settings().listen_address == "0.0.0.0:9877"
    monkeypatch.setenv("BIFROST_EXPORTER_PORTS", "1")
    with pytest.raises(ConfigError, match="unknown environment variable BIFROST_EXPORTER_PORTS"):
        load_settings()


def test_service_link_variables_of_any_bifrost_exporter_service_are_not_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Release `bifrost-exporter` names its Service bifrost-exporter-bifrost-batch-exporter; a shard's Service
    bifrost-exporter-openai has a named port and (dual-stack) an IPv6 cluster IP, in brackets in the URLs."""
    for name, value in {
        "BIFROST_EXPORTER_BIFROST_BATCH_EXPORTER_SERVICE_HOST": "10.96.0.10",
        "BIFROST_EXPORTER_BIFROST_BATCH_EXPORTER_SERVICE_PORT": "9877",
        "BIFROST_EXPORTER_BIFROST_BATCH_EXPORTER_SERVICE_PORT_HTTP_METRICS": "9877",
        "BIFROST_EXPORTER_BIFROST_BATCH_EXPORTER_PORT": "tcp://10.96.0.10:9877",
        "BIFROST_EXPORTER_BIFROST_BATCH_EXPORTER_PORT_9877_TCP": "tcp://10.96.0.10:9877",
        "BIFROST_EXPORTER_BIFROST_BATCH_EXPORTER_PORT_9877_TCP_PROTO": "tcp",
        "BIFROST_EXPORTER_BIFROST_BATCH_EXPORTER_PORT_9877_TCP_PORT": "9877",
        "BIFROST_EXPORTER_BIFROST_BATCH_EXPORTER_PORT_9877_TCP_ADDR": "10.96.0.10",
        "BIFROST_EXPORTER_OPENAI_SERVICE_HOST": "fd00:10:96::11",
        "BIFROST_EXPORTER_OPENAI_SERVICE_PORT": "9877",
        "BIFROST_EXPORTER_OPENAI_SERVICE_PORT_HTTP_METRICS": "9877",
        "BIFROST_EXPORTER_OPENAI_PORT": "tcp://[fd00:10:96::11]:9877",
        "BIFROST_EXPORTER_OPENAI_PORT_9877_TCP": "tcp://[fd00:10:96::11]:9877",
        "BIFROST_EXPORTER_OPENAI_PORT_9877_TCP_PROTO": "tcp",
        "BIFROST_EXPORTER_OPENAI_PORT_9877_TCP_PORT": "9877",
        "BIFROST_EXPORTER_OPENAI_PORT_9877_TCP_ADDR": "fd00:10:96::11",
    }.items():
        monkeypatch.setenv(name, value)
    assert load_settings().providers == DEFAULT_PROVIDERS


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BIFROST_EXPORTER_POLL_INTERVAL", "5"),
        ("BIFROST_EXPORTER_LISTEN_PORT", "9877"),  # a link's shape, but no Service beside it
        ("BIFROST_EXPORTER_WEB_SERVICE_HOST", "10.0.0.1"),
        ("BIFROST_EXPORTER_LISTEN_PORT", "0.0.0.0:9877"),  # not PROTO://IP:PORT
        ("BIFROST_EXPORTER_OPENAI_PORT_9877_TCP_HOST", "10.0.0.1"),  # no such link suffix
    ],
)
def test_a_setting_shaped_like_a_service_link_is_still_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("BIFROST_EXPORTER_OPENAI_PORT", "tcp://10.0.0.7:9877")  # a real link beside it
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"unknown environment variable {name}( |$)"):
        load_settings()


def test_unknown_yaml_keys_are_refused_with_position_and_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"providers: [openai]\npoll-interval-seconds: 5\npage_sise: 10\n{SECRET}: x\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=config)
    assert str(info.value) == (
        f"unknown setting 'poll-interval-seconds' in config file {config}:2:1 "
        "(did you mean 'poll_interval_seconds'?); "
        f"unknown setting 'page_sise' in config file {config}:3:1 (did you mean 'page_size'?); "
        f"unknown key in config file {config}:4:1 (not a setting name)"
    )


def test_a_bad_yaml_value_names_file_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("providers: [openai]\n\n  # comment\npage_size:   lots\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=config)
    assert str(info.value).startswith(f"invalid setting page_size='lots' (from config file {config}:4:1): ")


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("providers: [openai\npage_size: 3\n", "2:10", "expected ',' or ']', but got ':'"),
        ("page_size: 1\npage_size: 2\n", "2:1", "found a key given twice in one mapping"),
        ("a: b: c\n", "1:5", "mapping values are not allowed here"),
        ("page_size: 1\n\tmax_pages: 2\n", "2:1", "found character '\\t' that cannot start any token"),
        ("virtual_key: *sk-bf-alias\n", "1:14", "found undefined alias '…'"),
        ("virtual_key: !sk-bf-tag x\n", "1:14", "could not determine a constructor for the tag '…'"),
        ("page_size: 1\x07\n", "1:13", "character U+0007 is not allowed in YAML"),
        # Values YAML parses but cannot build: PyYAML's constructors raise a bare ValueError or KeyError quoting the
        # value (a tagged secret), with no position; it used to escape as a traceback (exit 1), secret on stderr.
        ("page_size: 7\nx: 2024-02-30\n", "2:4", "a value that cannot be read as timestamp"),
        ("x: 0x_\n", "1:4", "a value that cannot be read as int"),
        ("virtual_key: !!int sk-bf-tagged-int\n", "1:14", "a value that cannot be read as int"),
        ("virtual_key: !!float sk-bf-tagged-float\n", "1:14", "a value that cannot be read as float"),
        ("virtual_key: !!bool sk-bf-tagged-bool\n", "1:14", "a value that cannot be read as bool"),
        ("providers: [openai, !!timestamp sk-bf-ts]\n", "1:21", "a value that cannot be read as timestamp"),
    ],
)
def test_yaml_syntax_errors_are_file_line_column_and_the_problem_only(
    tmp_path: Path, text: str, where: str, problem: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=config)
    message = str(info.value)
    assert message.startswith(f"invalid setting config: {config}:{where}: {problem}"), message
    assert "\n" not in message and "sk-bf" not in message


def test_a_yaml_file_with_a_bom_reads_and_one_not_utf8_says_where(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(b"\xef\xbb\xbfpage_size: 7\n")
    assert load_settings(config_file=config).page_size == 7
    config.write_bytes(b"page_size: 7\nvirtual_key: sk-\xff\n")
    with pytest.raises(ConfigError, match=rf"^invalid setting config: {config}:2:17: not UTF-8 text$"):
        load_settings(config_file=config)


def test_telemetry_path_must_be_a_free_path() -> None:
    assert Settings(telemetry_path="/exporter/metrics").telemetry_path == "/exporter/metrics"
    for bad in ("metrics", "/healthz", "/", "/m?x=1", "/a b"):
        with pytest.raises(ValueError, match="telemetry_path"):
            Settings(telemetry_path=bad)


# --- found in a review of the configuration surface ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["state_dir", "virtual_key_dir"])
def test_an_empty_directory_setting_is_refused_not_read_as_the_working_directory(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Path("") is "."; an env var set to nothing would put the ledger in, or send every file of, the cwd."""
    (tmp_path / "notes.txt").write_text("not a key\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(f"BIFROST_EXPORTER_{name.upper()}", "")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        f"invalid setting {name}='' (from environment BIFROST_EXPORTER_{name.upper()}): "
        "is empty: name a directory, or leave the setting unset"
    )
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize(
    "item",
    ["X-Api-Key: SEKRITc2VjcmV0==", "Authorization: Basic SEKRIThunter2dXNlcjpwYXNz=", "X Org=SEKRITvalue"],
)
def test_a_header_written_as_name_colon_value_never_shows_the_value(item: str) -> None:
    """`Name: value=` splits at its last-but-one '=' as NAME=VALUE: the refused "name" holds the credentials."""
    with pytest.raises(ConfigError, match="invalid setting extra_headers") as info:
        load_settings({"extra_headers": [item]})
    assert "SEKRIT" not in str(info.value)
    assert "is not a valid header name (write NAME=VALUE)" in str(info.value)
    assert repr(item.split(":")[0].split(" ")[0]) in str(
        info.value
    )  # what it does show: the name's good part


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("gar bage!!:9877", "'gar bage!!' is neither an IPv4 address nor a host name"),
        ("1.2.3.4.5:9877", "'1.2.3.4.5' is neither an IPv4 address nor a host name"),
        ("300.1.1.1:9877", "'300.1.1.1' is neither an IPv4 address nor a host name"),
        ("-host:9877", "'-host' is neither an IPv4 address nor a host name"),
        ("[:::::]:9877", "':::::' is not an IPv6 address"),
    ],
)
def test_a_listen_host_that_cannot_be_bound_is_refused_at_start(address: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"listen_address": address})
    assert str(info.value) == (
        f"invalid setting listen_address={address!r} (from the command line): {problem}"
    )


@pytest.mark.parametrize(
    "address", [":9877", "0.0.0.0:9877", "127.0.0.1:1", "localhost:9877", "exporter.ns.svc.:9877", "[::]:0",
                "[::ffff:10.0.0.1]:9877", "my-host-1:9877"],
)  # fmt: skip
def test_listen_addresses_that_bind_are_taken(address: str) -> None:
    assert load_settings({"listen_address": address}).listen_address == address


@pytest.mark.parametrize(
    ("address", "listen"),
    [(":9877", ("", 9877)), ("0.0.0.0:9877", ("0.0.0.0", 9877)), ("[::]:9877", ("::", 9877))],
)
def test_an_empty_listen_host_stays_empty_for_the_server(address: str, listen: tuple[str, int]) -> None:
    """The server binds every address of both families for "", IPv4 only for 0.0.0.0 (tests/test_server.py)."""
    assert load_settings({"listen_address": address}).listen == listen


def test_checks_of_two_settings_name_one_setting_and_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIFROST_EXPORTER_POLL_INTERVAL_SECONDS", "900")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        "invalid setting resync_interval_seconds (default): must be >= poll_interval_seconds (900) "
        "in incremental mode"
    )
    # resync_interval_seconds is not used in full mode: its default does not stand in the way of a long interval
    assert load_settings({"poll_mode": "full"}).poll_interval_seconds == 900
    with pytest.raises(ConfigError) as info:
        load_settings({"poll_mode": "full", "stale_after_seconds": 60})
    assert str(info.value) == (
        "invalid setting stale_after_seconds (from the command line): must be >= poll_interval_seconds (900)"
    )
    monkeypatch.delenv("BIFROST_EXPORTER_POLL_INTERVAL_SECONDS")
    with pytest.raises(ConfigError) as info:
        load_settings({"basic_auth_username": "ops"})
    assert str(info.value) == (
        "invalid setting basic_auth_username (from the command line): needs basic_auth_password "
        "(or basic_auth_password_file) as well"
    )
    with pytest.raises(ConfigError, match=r"^invalid setting basic_auth_password \(from the command line\)"):
        load_settings({"basic_auth_password": "pw-value"})
    with pytest.raises(ConfigError) as info:
        load_settings(
            {"bearer_token": "tok-value", "basic_auth_username": "ops", "basic_auth_password": "pw"}
        )
    assert str(info.value) == (
        "invalid setting bearer_token (from the command line): basic_auth_username/basic_auth_password are set "
        "too; choose one login"
    )


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("page_size: yes\n", "page_size"),
        ("poll_interval_seconds: true\n", "poll_interval_seconds"),
        ("per_batch_limit: on\n", "per_batch_limit"),
        ("max_retries: no\n", "max_retries"),
        ("stale_after_seconds: off\n", "stale_after_seconds"),
        ("duration_buckets: [yes, 60]\n", "duration_buckets"),
    ],
)
def test_a_yaml_boolean_is_not_read_as_a_number(tmp_path: Path, text: str, setting: str) -> None:
    """YAML reads yes/on/true as booleans; taken for 1 (`page_size: yes`: a hundred times the list requests) the
    file would say what a flag or the environment is refused for."""
    config = tmp_path / "config.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings({}, config)
    message = str(info.value)
    assert message.startswith(f"invalid setting {setting}=") and f"(from config file {config}:1:1)" in message
    assert "must be a number, not the boolean" in message


def test_a_boolean_in_a_bucket_list_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIFROST_EXPORTER_LATENCY_BUCKETS", "[true, 5]")
    with pytest.raises(
        ConfigError, match=r"invalid setting latency_buckets.*must be a number, not the boolean true"
    ):
        load_settings({})


@pytest.mark.parametrize(
    "setting",
    ["state_dir", "virtual_key_dir", "virtual_key_file", "basic_auth_password_file", "bearer_token_file",
     "ca_file", "web_config_file"],
)  # fmt: skip
def test_a_path_with_a_nul_byte_is_refused_naming_the_setting(tmp_path: Path, setting: str) -> None:
    """Only a YAML string can carry one; accepted, the OS refused it at first use: a traceback at start."""
    config = tmp_path / "config.yaml"
    config.write_text(f'{setting}: "{tmp_path}/a\\0b"\n')
    with pytest.raises(ConfigError) as info:
        load_settings({}, config)
    message = str(info.value)
    # A secret file's setting is named without its value (read before validation, as every secret file is).
    assert message.startswith(f"invalid setting {setting}")
    assert "contains a NUL byte" in message or "embedded null byte" in message


def test_one_gateway_spelled_differently_has_one_identity() -> None:
    """The state directory tells another gateway's state from its own by this (exporter/durable.py): a host's case,
    a trailing dot, the default port written out or a trailing slash is the same gateway, not a reason to count
    from this start."""
    from exporter.sendable import parse_gateway_url

    same = {
        parse_gateway_url(u).identity
        for u in ("http://Bifrost.NS.svc", "http://bifrost.ns.svc.:80", "http://bifrost.ns.svc/")
    }
    assert same == {"http://bifrost.ns.svc:80"}
    assert (
        parse_gateway_url("https://bifrost.ns.svc").identity
        != parse_gateway_url("http://bifrost.ns.svc").identity
    )
    assert parse_gateway_url("http://gw/Bifrost").identity != parse_gateway_url("http://gw/bifrost").identity
