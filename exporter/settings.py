"""The configuration contract: defaults → YAML file → BIFROST_EXPORTER_* env → command-line flags.

Everything is validated once, at start, so a typo stops the exporter with exit 2 and a message naming the setting
and where its value came from, instead of surfacing hours later as a silent gap in the metrics, a crash-looping
poll task or a traceback. What is validated is what the client will need: a value that passes here can be sent.
"""

from __future__ import annotations

import base64
import difflib
import functools
import ipaddress
import json
import os
import re
import typing
from collections.abc import Collection, Mapping
from contextvars import ContextVar
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

from .logs import DEPRECATED_LOG_FORMATS, DEPRECATED_LOG_LEVELS
from .secretfiles import MAX_SECRET_FILE_BYTES, read_secret_file, read_virtual_key_dir
from .sendable import (
    CLIENT_MANAGED_HEADERS,
    GatewayUrl,
    basic_auth_problem,
    header_value_problem,
    parse_gateway_url,
)
from .yamldoc import YamlDocument, YamlFileError, read_yaml

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "MAX_SECRET_FILE_BYTES",
    "ConfigError",
    "Settings",
    "load_settings",
    "read_secret_file",
    "read_yaml_document",
]

ENV_PREFIX = "BIFROST_EXPORTER_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"

DEFAULT_PROVIDERS = ("openai", "anthropic", "azure", "bedrock", "gemini", "vertex")
DEFAULT_DURATION_BUCKETS = (
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    43200.0,
    86400.0,
    172800.0,
)
DEFAULT_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SECRET_FIELDS = ("virtual_key", "basic_auth_username", "basic_auth_password", "bearer_token")
# A secret that may come from a file instead (how Kubernetes and Docker mount secrets): setting → its *_file twin.
SECRET_FILES = {
    "virtual_key": "virtual_key_file",
    "basic_auth_password": "basic_auth_password_file",
    "bearer_token": "bearer_token_file",
}
# Every setting that names something SIGHUP (or a change on disk) makes the exporter read again.
RELOADABLE_SECRET_SETTINGS = (*SECRET_FILES.values(), "virtual_key_dir")
MASK = "**********"
DEFAULT_KEY_NAME = "default"

_PROVIDER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_LABEL_CHAR_RE = re.compile(r"[^a-zA-Z0-9_]")
# Where a camelCase key gets an underscore: before an upper-case letter that follows a lower-case one or a digit
# (teamName → team_Name), and before the last of a run of capitals that a lower-case letter follows (HTTPCode →
# HTTP_Code).
_CAMEL_HUMP_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
MAX_METADATA_LABELS = 3
# What the kubelet (service links, on unless the pod spec says enableServiceLinks: false) and Docker links inject
# for every Service / linked container, the name upper-cased with `-` as `_` (kubelet pkg/kubelet/envvars):
# SVC_SERVICE_HOST, SVC_SERVICE_PORT[_PORTNAME], SVC_PORT and SVC_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]. Any
# Service named bifrost-exporter… (a release's own Service included) puts such names under our prefix: not ours,
# and refusing them would stop the exporter for the name of a neighbour.
_SERVICE_LINK_SUFFIX_RE = re.compile(
    r"_(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT(?:_\d{1,5}_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)?)"
)
# SVC_PORT's value, always set by both (the first port): PROTO://CLUSTER_IP:PORT, an IPv6 address in brackets.
_SERVICE_LINK_URL_RE = re.compile(r"(?:tcp|udp|sctp)://(?:[0-9.]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}")
# An unknown YAML key is repeated in the error only when it is shaped like a setting name (or close to one).
_SETTING_LIKE_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_HEADER_CHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"  # RFC 9110 token characters: all a field name may hold
_HEADER_RE = re.compile(rf"^{_HEADER_CHARS}+$")

_yaml_values: ContextVar[Mapping[str, Any]] = ContextVar("_yaml_values", default=MappingProxyType({}))
# Deprecated spellings met while validating (load_settings collects them; Settings() alone ignores them).
_deprecations: ContextVar[list[str] | None] = ContextVar("_deprecations", default=None)
_URL_PARTS_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?P<rest>.*)$", re.DOTALL)


class ConfigError(Exception):
    """A setting is invalid; str() is the one line printed before exit 2."""


def split_list(value: Any) -> Any:
    """Env gives lists as "a,b" or JSON; YAML and flags give real lists."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError as exc:
                raise ValueError(f"not a JSON list: {exc}") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _check_buckets(values: tuple[float, ...]) -> tuple[float, ...]:
    if not values:
        raise ValueError("needs at least one bucket")
    if any(not (v > 0 and v != float("inf")) for v in values):
        raise ValueError("buckets must be finite and > 0")
    if any(b <= a for a, b in pairwise(values)):
        raise ValueError("buckets must be strictly increasing")
    return values


def mask_url(value: str) -> str:
    """A URL as it may be printed: userinfo, a port that is not a number, query and fragment replaced.

    `https://user:pw@gw:8080/p?api_key=sk-…#x` → `https://***@gw:8080/p?***#***`; `http://admin:s3cret` (a
    password without its '@') → `http://admin:***`. Used for error text, where the URL is shown because it did not
    validate and so cannot be trusted to be free of secrets.
    """
    match = _URL_PARTS_RE.match(value)
    scheme, rest = (match["scheme"] or "", match["rest"]) if match else ("", value)
    rest, hash_, _ = rest.partition("#")
    rest, query, _ = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    host, colon, port = authority.rpartition(":")
    if colon and port and not port.isdigit() and not port.endswith("]"):
        authority = f"{host}:***"
    return scheme + authority + slash + path + ("?***" if query else "") + ("#***" if hash_ else "")


def quoted(text: str, limit: int = 200) -> str:
    """A value quoted for an error message: shortened, and masked like a URL when it may carry credentials."""
    return repr((mask_url(text) if _may_hold_credentials(text) else text)[:limit])


# Every virtual key Bifrost issues starts so (its config loader replaces a key without it), and its governance
# takes an `x-bf-vk` without it for no key at all: a keyless request, refused where keys are mandatory and not
# narrowed where they are optional, while the exporter would report the view as one tenant's.
VIRTUAL_KEY_PREFIX: Final = "sk-bf-"


def virtual_key_problem(value: str) -> str | None:
    """Why `value` cannot be sent as a virtual key, or None; never repeats the value."""
    problem = header_value_problem(value)
    if problem is None and not value.startswith(VIRTUAL_KEY_PREFIX):
        problem = f"is not a Bifrost virtual key (they begin with {VIRTUAL_KEY_PREFIX}; the gateway ignores any other)"
    return problem


# A virtual key that reaches the gateway another way than virtual_key* is still read as the request's key: Bifrost's
# governance (parseVirtualKeyFromHTTPRequest) takes `x-bf-vk` (older versions whatever it holds), else an `sk-bf-`
# value from `Authorization: Bearer`, `x-api-key` or `x-goog-api-key` (names and the prefix in any case). Lists then
# show that key's tenant while the view, which counts only virtual_key*, says the whole account; so such a setting
# is refused, and the keys of the view have one way in.
KEY_ELSEWHERE: Final = (
    f"holds a Bifrost virtual key ({VIRTUAL_KEY_PREFIX}…), which the gateway reads as the key of the exporter's view "
    "(it would show one tenant, reported as the whole account); set it as virtual_key, virtual_key_file or "
    "virtual_key_dir instead"
)
_KEY_VALUE_HEADERS: Final = frozenset({"x-api-key", "x-goog-api-key"})


def _is_virtual_key(value: str) -> bool:
    return value.strip().lower().startswith(VIRTUAL_KEY_PREFIX)


def header_key_problem(name: str, value: str) -> str | None:
    """Why the extra header `name` would carry a virtual key past the view, or None; never repeats the value."""
    lowered = name.lower()
    shown = f"extra_headers[{name!r}]"
    if lowered == "x-bf-vk":
        return (
            f"{shown} is the gateway's virtual key header, read as the key of the exporter's view whatever it holds; "
            "set the key as virtual_key, virtual_key_file or virtual_key_dir instead"
        )
    if lowered == "authorization":
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and _is_virtual_key(token):
            return f"{shown} {KEY_ELSEWHERE}"
    elif lowered in _KEY_VALUE_HEADERS and _is_virtual_key(value):
        return f"{shown} {KEY_ELSEWHERE}"
    return None


def _check_secret(name: str, value: str) -> str | None:
    """Why the secret `name` cannot be sent as `value`, or None; never repeats the value."""
    if not value:
        return "is empty"
    if name in ("basic_auth_username", "basic_auth_password"):
        return basic_auth_problem(value, username=name == "basic_auth_username")
    if name == "virtual_key":
        return virtual_key_problem(value)
    problem = header_value_problem(value)
    if problem is None and name == "bearer_token" and _is_virtual_key(value):
        problem = KEY_ELSEWHERE  # sent as `Authorization: Bearer`: the OpenAI SDK's way to send a Bifrost key
    return problem


def read_secret_setting(secret: str, path: Path) -> str:
    """The secret `secret` read from its file, checked to be sendable; ValueError naming the file, not the value."""
    value = read_secret_file(path)
    problem = _check_secret(secret, value)
    if problem is not None:
        raise ValueError(f"{quoted(str(path))} {problem}")
    return value


def read_virtual_keys(directory: Path) -> tuple[tuple[str, SecretStr], ...]:
    """The keys of a `virtual_key_dir`, each checked to be sendable as `x-bf-vk`."""
    keys: list[tuple[str, SecretStr]] = []
    for name, value in read_virtual_key_dir(directory):
        problem = virtual_key_problem(value)
        if problem is not None:
            raise ValueError(f"{quoted(str(directory / name))} {problem}")
        keys.append((name, SecretStr(value)))
    return tuple(keys)


def _refuse_booleans(value: Any) -> None:
    """A boolean where a number (or a list of numbers) is wanted: lax validation would take it for 1."""
    items = value if isinstance(value, list | tuple) else (value,)
    flag = next((item for item in items if isinstance(item, bool)), None)
    if flag is not None:
        raise ValueError(
            f"must be a number, not the boolean {str(flag).lower()} (YAML reads yes/no/on/off so)"
        )


@functools.cache
def _number_fields(model: type[BaseSettings]) -> frozenset[str]:
    """The settings whose type is a number (or a number or None)."""
    numbers: set[str] = set()
    for name, field in model.model_fields.items():
        kinds = typing.get_args(field.annotation) or (field.annotation,)
        if any(kind in (int, float) for kind in kinds) and bool not in kinds:
            numbers.add(name)
    return frozenset(numbers)


def _note_deprecated(text: str) -> None:
    notes = _deprecations.get()
    if notes is not None and text not in notes:
        notes.append(text)


def _alias(value: Any, aliases: Mapping[str, str], setting: str) -> Any:
    if not isinstance(value, str):
        return value
    lowered = value.strip().lower()
    if lowered in aliases:
        _note_deprecated(f"{setting} {lowered!r} is deprecated and will be removed; use {aliases[lowered]!r}")
        return aliases[lowered]
    return lowered


def _meta(metavar: str) -> dict[str, Any]:
    """The flag's metavar (what --help shows after it), kept beside the setting so a new one cannot lack it."""
    return {"metavar": metavar}


_SECONDS = _meta("SECONDS")


class Settings(BaseSettings):
    """Every setting; each description is the flag's --help sentence and the docs table's meaning, word for word."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True, case_sensitive=False
    )

    bifrost_url: str = Field(
        default="http://localhost:8080",
        description="Base URL of the Bifrost gateway: http or https, a host, an optional port and path prefix; "
        "no credentials, query or fragment.",
        json_schema_extra=_meta("URL"),
    )
    providers: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_PROVIDERS,
        description="Provider ids to poll, comma-separated; at least one, no duplicates.",
        json_schema_extra=_meta("PROVIDER,..."),
    )
    virtual_key: SecretStr | None = Field(
        default=None,
        description="Virtual key sent as x-bf-vk. Prefer virtual_key_file: flags show in ps.",
        json_schema_extra=_meta("KEY"),
    )
    virtual_key_file: Path | None = Field(
        default=None,
        description="File holding the virtual key; re-read on SIGHUP and when it changes.",
        json_schema_extra=_meta("FILE"),
    )
    virtual_key_dir: Path | None = Field(
        default=None,
        description="Directory holding one virtual key per file, named after the file; every provider is "
        "listed once per key. Re-read on SIGHUP and when it changes.",
        json_schema_extra=_meta("DIR"),
    )
    basic_auth_username: SecretStr | None = Field(
        default=None,
        description="User of the gateway's admin login, sent as Authorization: Basic with the password.",
        json_schema_extra=_meta("NAME"),
    )
    basic_auth_password: SecretStr | None = Field(
        default=None,
        description="Password of the gateway's admin login. Prefer basic_auth_password_file.",
        json_schema_extra=_meta("PASSWORD"),
    )
    basic_auth_password_file: Path | None = Field(
        default=None,
        description="File holding basic_auth_password; re-read on SIGHUP and when it changes.",
        json_schema_extra=_meta("FILE"),
    )
    bearer_token: SecretStr | None = Field(
        default=None,
        description="Token sent as Authorization: Bearer (not with basic auth). Prefer bearer_token_file.",
        json_schema_extra=_meta("TOKEN"),
    )
    bearer_token_file: Path | None = Field(
        default=None,
        description="File holding bearer_token; re-read on SIGHUP and when it changes.",
        json_schema_extra=_meta("FILE"),
    )
    extra_headers: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="More request headers, as NAME=VALUE (repeat the flag for more) or a JSON object; "
        "their values are treated as secrets.",
        json_schema_extra=_meta("NAME=VALUE"),
    )
    tls_verify: bool = Field(default=True, description="Verify the gateway's TLS certificate.")
    ca_file: Path | None = Field(
        default=None,
        description="CA bundle to verify the gateway's certificate with (unset: the system's trust store).",
        json_schema_extra=_meta("FILE"),
    )
    poll_interval_seconds: float = Field(
        default=30.0,
        ge=1,
        allow_inf_nan=False,
        description="Time between the starts of two polls of one provider; at least 1.",
        json_schema_extra=_SECONDS,
    )
    request_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        allow_inf_nan=False,
        description="Timeout of each request to the gateway, whole body included; at most 600.",
        json_schema_extra=_SECONDS,
    )
    page_size: int = Field(
        default=100,
        ge=1,
        le=1000,
        description="Batches asked for per list page (the limit parameter), 1 to 1000.",
        json_schema_extra=_meta("N"),
    )
    max_pages: int = Field(
        default=200,
        ge=1,
        le=100_000,
        description="Pages one poll lists per provider: in full mode a poll that reaches it stops as truncated; in "
        "incremental mode it caps a poll's scan of the newest pages, and a full list (spread over polls) is reported "
        "cut short (coverage max_pages) after 100 times as many pages of one key's walk; 1 to 100000.",
        json_schema_extra=_meta("N"),
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Retries of one request on timeout, connection error, 429 or 5xx, with exponential backoff "
        "and jitter, honouring Retry-After; at most 20.",
        json_schema_extra=_meta("N"),
    )
    stale_after_seconds: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Drop a provider's batch gauges after this long without a complete poll (its counters "
        "stay); at least poll_interval_seconds.",
        json_schema_extra=_SECONDS,
    )
    per_batch_metrics: bool = Field(
        default=False, description="Expose the per-batch bifrost_batch_job_* series."
    )
    per_batch_limit: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="Most per-batch series per provider; 1 to 10000.",
        json_schema_extra=_meta("N"),
    )
    duration_buckets: Annotated[tuple[float, ...], NoDecode] = Field(
        default=DEFAULT_DURATION_BUCKETS,
        description="Buckets of bifrost_batch_duration_seconds and bifrost_batch_stage_duration_seconds.",
        json_schema_extra=_meta("SECONDS,..."),
    )
    latency_buckets: Annotated[tuple[float, ...], NoDecode] = Field(
        default=DEFAULT_LATENCY_BUCKETS,
        description="Buckets of bifrost_batch_upstream_latency_seconds.",
        json_schema_extra=_meta("SECONDS,..."),
    )
    listen_address: str = Field(
        default="0.0.0.0:9877",
        description="Address to serve the metrics, /healthz, /readyz and / on; IPv6 as [ADDR]:PORT; an empty "
        "host (:PORT) is every address of both families.",
        json_schema_extra=_meta("HOST:PORT"),
    )
    web_config_file: Path | None = Field(
        default=None,
        description="exporter-toolkit web configuration file (TLS, basic auth) for the exporter's own server; "
        "re-read on SIGHUP and when it changes.",
        json_schema_extra=_meta("FILE"),
    )
    telemetry_path: str = Field(
        default="/metrics",
        description="Path under which to expose the metrics.",
        json_schema_extra=_meta("PATH"),
    )
    log_level: Literal["debug", "info", "warn", "error"] = Field(
        default="info",
        description="Only log messages with the given severity or above: debug, info, warn or error.",
        json_schema_extra=_meta("LEVEL"),
    )
    log_format: Literal["logfmt", "json"] = Field(
        default="logfmt",
        description="Output format of log messages: logfmt or json.",
        json_schema_extra=_meta("FORMAT"),
    )
    max_response_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Largest list-page body accepted, at least 1024; a bigger one fails the poll as invalid_response.",
        json_schema_extra=_meta("BYTES"),
    )
    metadata_labels: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Batch metadata keys to add as metadata_<key> labels (the key in snake_case: teamName becomes "
        "metadata_team_name), comma-separated; at most 3.",
        json_schema_extra=_meta("KEY,..."),
    )
    state_dir: Path | None = Field(
        default=None,
        description="Directory of the durable ledger, so counters survive restarts; unset, nothing does.",
        json_schema_extra=_meta("DIR"),
    )
    poll_mode: Literal["incremental", "full"] = Field(
        default="incremental",
        description="incremental: known active batches and the newest list pages each poll, a full list every "
        "resync_interval_seconds to 6 times it; full: the whole list every poll.",
        json_schema_extra=_meta("MODE"),
    )
    resync_interval_seconds: float = Field(
        default=600.0,
        gt=0,
        allow_inf_nan=False,
        description="Shortest time between full lists of one provider in incremental mode: after a full list "
        "that found nothing the polls in between had missed the next waits twice as long, up to 6 times this; "
        "after one that did, this again. At least poll_interval_seconds.",
        json_schema_extra=_SECONDS,
    )
    max_requests_per_second: float = Field(
        default=10.0,
        gt=0,
        le=10_000,
        allow_inf_nan=False,
        description="Requests per second to the gateway per provider, list and retrieve together; a full list "
        "is paced to stay under it. At most 10000.",
        json_schema_extra=_meta("RATE"),
    )
    risk_no_progress_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Fraction of its completion window after which an active batch with nothing visibly done "
        "counts as at risk, until the provider is calibrated from the batches the exporter saw end; "
        "0 < value <= 1.",
        json_schema_extra=_meta("FRACTION"),
    )
    cost_metrics: bool = Field(
        default=False,
        description="Read each finished batch's settlement from the gateway's logs API and expose the cost "
        "metrics; needs the admin login (basic_auth_* or bearer_token).",
    )
    cost_horizon_seconds: float = Field(
        default=86400.0,
        gt=0,
        allow_inf_nan=False,
        description="How long after a batch finished its settlement is awaited before it counts as missing.",
        json_schema_extra=_SECONDS,
    )

    _dir_keys: tuple[tuple[str, SecretStr], ...] = PrivateAttr(default=())
    _keys_given: bool = PrivateAttr(
        default=False
    )  # virtual keys handed over in memory (--demo), not from files
    _deprecated: tuple[str, ...] = PrivateAttr(default=())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (init values, from the CLI) → env → YAML → defaults.

        The YAML mapping travels in pydantic-settings' own InitSettingsSource; load_settings parses the file
        itself because YamlConfigSettingsSource reports a broken or non-mapping file as a bare traceback (and
        PyYAML's message quotes the line, secret included). Its SecretsSettingsSource is not used: it reads one
        directory named after the fields, where the contract's *_file settings name a file each and are re-read
        on SIGHUP.
        """
        return (init_settings, env_settings, InitSettingsSource(settings_cls, dict(_yaml_values.get())))

    @field_validator("providers", "duration_buckets", "latency_buckets", "metadata_labels", mode="before")
    @classmethod
    def _lists(cls, value: Any, info: ValidationInfo) -> Any:
        items = split_list(value)
        if info.field_name in _number_fields(cls):
            _refuse_booleans(items)  # an environment's or a flag's JSON list: `[true, 5]`
        return items

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_alias(cls, value: Any) -> Any:
        return _alias(value, DEPRECATED_LOG_LEVELS, "log_level")

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format_alias(cls, value: Any) -> Any:
        return _alias(value, DEPRECATED_LOG_FORMATS, "log_format")

    @field_validator("poll_mode", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("bifrost_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return parse_gateway_url(value).text

    @field_validator("providers")
    @classmethod
    def _providers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one provider")
        for name in value:
            if not _PROVIDER_RE.match(name):
                raise ValueError(f"{quoted(name, 70)} is not a provider id (letters, digits, '_', '.', '-')")
        seen: set[str] = set()
        for name in value:
            if name in seen:
                raise ValueError(f"{name!r} is listed twice")
            seen.add(name)
        return value

    @field_validator("virtual_key", "bearer_token", "basic_auth_username", "basic_auth_password")
    @classmethod
    def _sendable_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None:
            problem = _check_secret(info.field_name or "", value.get_secret_value())
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("metadata_labels")
    @classmethod
    def _metadata_labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_METADATA_LABELS:
            raise ValueError(f"at most {MAX_METADATA_LABELS} metadata keys")
        labels = [metadata_label_name(key) for key in value]
        if len(set(labels)) != len(labels):
            raise ValueError("two keys map to the same label name after sanitising")
        return value

    @field_validator(
        "virtual_key_file", "virtual_key_dir", "basic_auth_password_file", "bearer_token_file", "ca_file",
        "web_config_file", "state_dir", mode="before",
    )  # fmt: skip
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # No file name holds one (only a YAML string can): the OS refuses the path at first use, which would be a
        # traceback at start instead of this setting named.
        if isinstance(value, str | Path) and "\x00" in str(value):
            raise ValueError("contains a NUL byte, which no path can")
        return value

    @field_validator("state_dir", "virtual_key_dir", mode="before")
    @classmethod
    def _directory_named(cls, value: Any) -> Any:
        # Path("") is ".": an empty value (an env var set to nothing, a chart value left "") would otherwise put the
        # ledger in, or send every file of, whatever directory the process happens to start in.
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: name a directory, or leave the setting unset")
        return value

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path | None) -> Path | None:
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError(f"{quoted(str(value))} exists and is not a directory")
        return value

    @field_validator("virtual_key_dir")
    @classmethod
    def _key_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{quoted(str(value))} does not exist or is not a directory")
        return value

    @field_validator("extra_headers", mode="before")
    @classmethod
    def _headers_in(cls, value: Any) -> Any:
        return parse_header_items(value)

    @field_validator("extra_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name, header_value in value.items():
            if not _HEADER_RE.match(name):
                raise ValueError(f"{header_name_shown(name)} is not a valid header name (write NAME=VALUE)")
            if name.lower() in CLIENT_MANAGED_HEADERS:
                raise ValueError(f"header {name!r} is written by the HTTP client itself and cannot be set")
            if name.lower() in seen:
                raise ValueError(f"header {name!r} is given twice (header names ignore case)")
            seen.add(name.lower())
            problem = header_value_problem(header_value)
            if problem is not None:
                raise ValueError(f"value of header {name!r} {problem}")
            problem = header_key_problem(name, header_value)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("duration_buckets", "latency_buckets")
    @classmethod
    def _buckets(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        return _check_buckets(value)

    @field_validator("listen_address")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen_address(value)
        return value

    @field_validator("telemetry_path")
    @classmethod
    def _telemetry_path(cls, value: str) -> str:
        if not re.match(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*$", value):
            raise ValueError("must be a path starting with '/' (no query, fragment or spaces)")
        if value in ("/", "/healthz", "/readyz"):
            raise ValueError(f"{value!r} is served by the exporter already; choose another path")
        return value

    @field_validator("ca_file", "web_config_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {quoted(str(value))} does not exist or is not a file")
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """A number setting given a boolean is refused: YAML reads `yes`, `on` and `true` as booleans, and lax
        validation would take them for 1 (`page_size: yes` is a list walk of a hundred times the requests), while
        the same word from a flag or the environment is refused."""
        if info.field_name in _number_fields(cls):
            _refuse_booleans(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        """Fill each secret from its *_file twin before validation, so every later check sees the value.

        An error names the *_file setting (and the file), which is what the operator has to fix.
        """
        if not isinstance(data, dict):
            return data
        if data.get("virtual_key_dir") is not None:
            for other in ("virtual_key", "virtual_key_file"):
                if data.get(other) is not None:
                    raise ValueError(f"virtual_key_dir: {other} is set too; set only one of them")
        for secret, file_setting in SECRET_FILES.items():
            path = data.get(file_setting)
            if path is None or not isinstance(path, str | Path):
                continue
            if data.get(secret) is not None:
                raise ValueError(f"{file_setting}: {secret} is set too; set only one of them")
            try:
                data[secret] = read_secret_setting(secret, Path(path))
            except ValueError as exc:
                raise ValueError(f"{file_setting}: {exc}") from None
        return data

    @model_validator(mode="after")
    def _combinations(self) -> Settings:
        # Each check names one setting first ("name: problem"), so the error says where that value came from.
        if self.basic_auth_username is not None and self.basic_auth_password is None:
            raise ValueError(
                "basic_auth_username: needs basic_auth_password (or basic_auth_password_file) as well"
            )
        if self.basic_auth_password is not None and self.basic_auth_username is None:
            raise ValueError("basic_auth_password: needs basic_auth_username as well")
        if self.bearer_token is not None and self.basic_auth_username is not None:
            raise ValueError(
                "bearer_token: basic_auth_username/basic_auth_password are set too; choose one login"
            )
        if self.poll_mode == "incremental" and self.resync_interval_seconds < self.poll_interval_seconds:
            raise ValueError(
                f"resync_interval_seconds: must be >= poll_interval_seconds ({self.poll_interval_seconds:g}) "
                "in incremental mode"
            )
        if self.stale_after_seconds is not None and self.stale_after_seconds < self.poll_interval_seconds:
            raise ValueError(
                f"stale_after_seconds: must be >= poll_interval_seconds ({self.poll_interval_seconds:g})"
            )
        if self.cost_metrics and self.basic_auth_username is None and self.bearer_token is None:
            raise ValueError(
                "cost_metrics: needs the gateway's admin login (basic_auth_username with basic_auth_password, "
                "or bearer_token): the logs API does not take a virtual key"
            )
        if self.virtual_key_dir is not None:
            try:
                self._dir_keys = read_virtual_keys(self.virtual_key_dir)
            except ValueError as exc:
                raise ValueError(f"virtual_key_dir: {exc}") from None
        return self

    @property
    def stale_after(self) -> float:
        return (
            self.stale_after_seconds
            if self.stale_after_seconds is not None
            else 5 * self.poll_interval_seconds
        )

    @property
    def listen(self) -> tuple[str, int]:
        return parse_listen_address(self.listen_address)

    @property
    def gateway(self) -> GatewayUrl:
        """bifrost_url taken apart (scheme, host, port, path prefix), as validated."""
        return parse_gateway_url(self.bifrost_url)

    def virtual_keys(self) -> tuple[tuple[str, SecretStr], ...]:
        """The virtual keys to list with, in order: (name, key) pairs; empty when none is configured.

        `virtual_key_dir`: one per file, by file name. `virtual_key_file`: one, named after the file.
        `virtual_key`: one, named "default". A name is what logs may show; the key never is.
        """
        if self.virtual_key_dir is not None or self._keys_given:
            return self._dir_keys
        if self.virtual_key is None:
            return ()
        name = self.virtual_key_file.name if self.virtual_key_file is not None else DEFAULT_KEY_NAME
        return ((name, self.virtual_key),)

    def with_virtual_keys(self, keys: tuple[tuple[str, SecretStr], ...]) -> Settings:
        """These settings listing with `keys` (name, key) as a key directory would give them, without files: the
        demo's own gateway hands its tenants' keys over in memory (a read-only container has nowhere to write)."""
        fresh = self.model_copy(
            update={"virtual_key": None, "virtual_key_file": None, "virtual_key_dir": None}
        )
        fresh._dir_keys = tuple(keys)
        fresh._keys_given = True
        return fresh

    def deprecations(self) -> tuple[str, ...]:
        """Deprecated spellings these settings were given in (one line each), for a warning at start."""
        return self._deprecated

    def basic_auth_token(self) -> str | None:
        """base64(user:password) as the Authorization header carries it, or None without basic auth."""
        if self.basic_auth_username is None or self.basic_auth_password is None:
            return None
        pair = f"{self.basic_auth_username.get_secret_value()}:{self.basic_auth_password.get_secret_value()}"
        return base64.b64encode(pair.encode()).decode("ascii")

    def secret_values(self) -> list[str]:
        """Every secret string in every spelling we send, for the redactors of logs and failure details.

        Header values count, as they often carry keys; basic auth also travels base64-encoded; every key of a
        virtual_key_dir is one.
        """
        values = [s.get_secret_value() for s in (getattr(self, f) for f in SECRET_FIELDS) if s is not None]
        values.extend(key.get_secret_value() for _, key in self._dir_keys)
        values.extend(self.extra_headers.values())
        token = self.basic_auth_token()
        if token is not None:
            values.append(token)
        return [v for v in values if len(v) >= 4]

    def reread_secret_files(self) -> Settings:
        """These settings with every secret file and key directory read again (SIGHUP): a rotated Secret is used
        from the next request on.

        Raises ConfigError naming the setting and the file when one cannot be used (unreadable, or a value that
        cannot be sent); the caller keeps the credentials it has. Nothing is half-applied.
        """
        update: dict[str, Any] = {}
        for secret, file_setting in SECRET_FILES.items():
            path = getattr(self, file_setting)
            if path is None:
                continue
            try:
                update[secret] = SecretStr(read_secret_setting(secret, path))
            except ValueError as exc:
                raise ConfigError(f"invalid setting {file_setting}: {exc}") from None
        dir_keys = self._dir_keys
        if self.virtual_key_dir is not None:
            try:
                dir_keys = read_virtual_keys(self.virtual_key_dir)
            except ValueError as exc:
                raise ConfigError(f"invalid setting virtual_key_dir: {exc}") from None
        if not update and self.virtual_key_dir is None:
            return self
        fresh = self.model_copy(update=update)
        fresh._dir_keys = dir_keys
        return fresh

    def masked(self) -> dict[str, Any]:
        """The effective settings as --check-config prints them: secrets and header values replaced."""
        out = self.model_dump(mode="json")
        for name in SECRET_FIELDS:
            if out.get(name) is not None:
                out[name] = MASK
        out["extra_headers"] = {k: MASK for k in self.extra_headers}
        out["stale_after_seconds"] = self.stale_after
        return out


def parse_header_items(value: Any) -> Any:
    """extra_headers from any source: a mapping (YAML), a JSON object, `NAME=VALUE`, or a list of either (the
    repeatable flag). Errors say which form was expected, never the text (a value may be a secret)."""
    if value is None or isinstance(value, dict):
        return value
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return value
    merged: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str):
            return value  # let the type check say what is wrong
        text = item.strip()
        if not text:
            continue
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError:
                raise ValueError("must be NAME=VALUE or a JSON object of header names to values") from None
            if not isinstance(parsed, dict):
                raise ValueError("must be NAME=VALUE or a JSON object of header names to values")
            pairs = list(parsed.items())
        else:
            name, equals, header_value = item.partition("=")
            if not equals or not name.strip():
                raise ValueError("must be NAME=VALUE or a JSON object of header names to values")
            pairs = [(name.strip(), header_value)]
        for name, header_value in pairs:
            if any(str(name).lower() == str(k).lower() for k in merged):
                raise ValueError(
                    f"header {header_name_shown(str(name))} is given twice (header names ignore case)"
                )
            merged[name] = header_value
    return merged


def header_name_shown(name: str) -> str:
    """A refused header name for an error message: only up to its first character that no name may hold.

    What follows such a character is most likely a value (`Authorization: Basic …=` read as NAME=VALUE splits at
    the base64 padding, leaving the credentials in the "name"), and values are never shown.
    """
    match = re.match(rf"{_HEADER_CHARS}*", name)
    shown = match.group(0) if match else ""
    return quoted(shown[:70]) + ("..." if len(shown) < len(name) else "")


def metadata_label_name(key: str) -> str:
    """The label a metadata key becomes: `metadata_` + the key in snake_case (camelCase split at its humps, every
    character outside [a-zA-Z0-9_] as `_`, lower case): Prometheus' naming convention, which `promtool check
    metrics` enforces for label names (`teamName` → `metadata_team_name`)."""
    if not key:
        raise ValueError("metadata keys must not be empty")
    snake = _CAMEL_HUMP_RE.sub("_", key)
    return "metadata_" + _LABEL_CHAR_RE.sub("_", snake).lower()


def parse_listen_address(value: str) -> tuple[str, int]:
    """(host, port); the host is "" for `:PORT`, which the server binds on every address of both families (as the
    exporter-toolkit's `:9100` does), while `0.0.0.0:PORT` stays IPv4 only."""
    match = re.match(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$", value)
    if not match:
        raise ValueError("must be HOST:PORT (IPv6 as [ADDR]:PORT)")
    port = int(match.group("port"))
    if port > 65535:
        raise ValueError("port must be 0-65535")
    v6, name = match.group("v6"), match.group("host")
    if v6 is not None:
        try:
            ipaddress.IPv6Address(v6)
        except ValueError:
            raise ValueError(f"{v6!r} is not an IPv6 address") from None
        return v6, port
    if name and not _listen_host_ok(name):
        raise ValueError(f"{quoted(name, 70)} is neither an IPv4 address nor a host name")
    return name, port


def _listen_host_ok(host: str) -> bool:
    """An IPv4 address, or a DNS name (RFC 1123 labels): caught here, a typo fails at start with the setting's
    name instead of as a resolver error once the server binds."""
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(
        re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label) for label in labels
    )


def read_yaml_document(path: Path, setting: str) -> Any:
    """The YAML document in a file a setting names, or ConfigError naming the setting, the file, the line and
    column, and the problem: never a piece of the file, which may hold a secret (a key, a hash, an inline TLS key).
    """
    return _read_yaml_file(path, setting).value


def _read_yaml_file(path: Path, setting: str) -> YamlDocument:
    try:
        return read_yaml(path)
    except YamlFileError as exc:
        raise ConfigError(f"invalid setting {setting}: {exc}") from None


def _suggest(word: str, choices: Collection[str]) -> str | None:
    """The closest choice to a misspelt name (also when spelt as a flag, `poll-interval-seconds`), or None."""
    normal = word.strip().lower().replace("-", "_").replace(".", "_")
    if normal in choices and normal != word:
        return normal
    close = difflib.get_close_matches(normal, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _service_links(environ: Mapping[str, str]) -> set[str]:
    """The BIFROST_EXPORTER_* names that are service links. A name counts only in the shape the kubelet gives it and
    only beside its Service's SVC_PORT holding PROTO://IP:PORT (the kubelet and Docker always set that one), so a
    misspelt setting that merely ends in _PORT or _SERVICE_HOST is still refused."""
    names = {key.upper(): value for key, value in environ.items() if key.upper().startswith(ENV_PREFIX)}
    services = [
        name.removesuffix("_PORT")
        for name, value in names.items()
        if name.endswith("_PORT") and _SERVICE_LINK_URL_RE.fullmatch(value.strip())
    ]
    return {
        name
        for name in names
        for service in services
        if name.startswith(service) and _SERVICE_LINK_SUFFIX_RE.fullmatch(name[len(service) :])
    }


def _unknown_env(environ: Mapping[str, str]) -> list[str]:
    """Each BIFROST_EXPORTER_* variable that is no setting: a typo there would otherwise be ignored in silence.

    Except the service-link variables Kubernetes and Docker define for a Service named `bifrost-exporter…`.
    """
    problems = []
    links = _service_links(environ)
    for key in sorted(environ):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper == CONFIG_ENV:
            continue
        name = upper.removeprefix(ENV_PREFIX).lower()
        if name in Settings.model_fields or upper in links:
            continue
        hint = _suggest(name, Settings.model_fields)
        problems.append(
            f"unknown environment variable {key[:100]}"
            + (f" (did you mean {ENV_PREFIX}{hint.upper()}?)" if hint else "")
        )
    return problems


def _unknown_keys(doc: YamlDocument, path: Path) -> list[str]:
    problems = []
    for key in doc.value:
        name = str(key)
        if name in Settings.model_fields:
            continue
        line, column = doc.key_positions.get(name, (0, 0))
        where = f"{path}:{line}:{column}" if line else str(path)
        hint = _suggest(name, Settings.model_fields)
        if hint is None and not _SETTING_LIKE_RE.match(name):
            # Not close to any setting and not shaped like one: maybe a secret whose line lost its key.
            problems.append(f"unknown key in config file {where} (not a setting name)")
            continue
        problems.append(
            f"unknown setting {quoted(name, 70)} in config file {where}"
            + (f" (did you mean {hint!r}?)" if hint else "")
        )
    return problems


def _source_of(
    name: str,
    flags: Collection[str],
    environ: Mapping[str, str],
    doc: YamlDocument,
    config_path: Path | None,
) -> str:
    if name in flags:
        return "from the command line"
    env_name = ENV_PREFIX + name.upper()
    if any(k.upper() == env_name for k in environ):
        return f"from environment {env_name}"
    if isinstance(doc.value, dict) and name in doc.value:
        line, column = doc.key_positions.get(name, (0, 0))
        return f"from config file {config_path}" + (f":{line}:{column}" if line else "")
    return "default"


def load_settings(flags: Mapping[str, Any] | None = None, config_file: Path | None = None) -> Settings:
    """Build Settings from every source, or raise ConfigError with one line naming each bad setting.

    `flags` are the command line's values (setting name → value as given), which win over everything else.
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ
    problems = _unknown_env(environ)
    if config_file is None and environ.get(CONFIG_ENV):
        config_file = Path(environ[CONFIG_ENV])
    doc = YamlDocument({})
    if config_file is not None:
        doc = _read_yaml_file(config_file, "config")
        if doc.value is None:
            doc = YamlDocument({})
        elif not isinstance(doc.value, dict):
            raise ConfigError(
                f"invalid setting config: {config_file} must be a YAML mapping of setting names"
            )
        problems.extend(_unknown_keys(doc, config_file))
    if problems:
        raise ConfigError("; ".join(problems))
    yaml_values = {str(k): v for k, v in doc.value.items()}
    token = _yaml_values.set(yaml_values)
    notes: list[str] = []
    notes_token = _deprecations.set(notes)
    try:
        settings = Settings(**flags)
    except SettingsError as exc:
        raise ConfigError(f"invalid settings: {_first_line(str(exc))}") from None
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, set(flags), environ, doc, config_file)) from None
    finally:
        _yaml_values.reset(token)
        _deprecations.reset(notes_token)
    settings._deprecated = tuple(notes)
    return settings


def _describe_errors(
    exc: ValidationError,
    flags: Collection[str],
    environ: Mapping[str, str],
    doc: YamlDocument,
    config_file: Path | None,
) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        name = loc[0] if loc else ""
        msg = err["msg"].removeprefix("Value error, ")
        if not name:
            # A model-level check names its setting first ("virtual_key_file: ..."), or several in the text.
            named = re.match(r"^([a-z_]+): (.*)$", msg, re.DOTALL)
            if named and named[1] in Settings.model_fields:
                source = _source_of(named[1], flags, environ, doc, config_file)
                problems.append(f"invalid setting {named[1]} ({source}): {named[2]}")
            else:
                problems.append(msg)
            continue
        if err["type"] == "extra_forbidden":
            hint = _suggest(name, Settings.model_fields)
            problems.append(
                f"unknown setting {quoted(name, 70)} given" + (f" (did you mean {hint!r}?)" if hint else "")
            )
            continue
        source = _source_of(name, flags, environ, doc, config_file)
        problems.append(f"invalid setting {name}{shown_value(name, err.get('input'))} ({source}): {msg}")
    return "; ".join(problems)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unreadable value"


def shown_value(name: str, value: Any) -> str:
    """`=<value>` for an error message, or "" when the value may hold a secret.

    Secrets, header values and anything that is not a plain scalar are never shown; strings that look like a URL
    are shown with userinfo, a non-numeric port, query and fragment masked (a key often rides in `?api_key=`).
    """
    if name in SECRET_FIELDS or name == "extra_headers" or value is None:
        return ""
    if isinstance(value, str):
        text = repr(mask_url(value) if _may_hold_credentials(value) else value)
    elif isinstance(value, bool | int | float):
        text = repr(value)
    elif isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        if any(isinstance(v, str) and _may_hold_credentials(v) for v in value):
            return ""
        text = repr(list(value))
    else:
        return ""
    return "=" + (text if len(text) <= 80 else text[:77] + "...")


def _may_hold_credentials(text: str) -> bool:
    return "://" in text or "@" in text or "?" in text or "#" in text
