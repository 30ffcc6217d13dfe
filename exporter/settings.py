"""The configuration contract: defaults → YAML file → BIFROST_EXPORTER_* env → command-line flags.

Everything is validated once, at start, so a typo stops the exporter with exit 2 and a message naming the setting
and where its value came from, instead of surfacing hours later as a silent gap in the metrics.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Collection, Mapping
from contextvars import ContextVar
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

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
MAX_SECRET_FILE_BYTES = 64 * 1024
MASK = "**********"

_PROVIDER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_LABEL_CHAR_RE = re.compile(r"[^a-zA-Z0-9_]")
MAX_METADATA_LABELS = 3
_HEADER_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

_yaml_values: ContextVar[Mapping[str, Any]] = ContextVar("_yaml_values", default=MappingProxyType({}))
_URL_PARTS_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?P<rest>.*)$", re.DOTALL)


class ConfigError(Exception):
    """A setting is invalid; str() is the one line printed before exit 2."""


def _split_list(value: Any) -> Any:
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
    """A URL as it may be printed: userinfo, query and fragment replaced, since any of them may carry a key.

    `https://user:pw@gw:8080/p?api_key=sk-…#x` → `https://***@gw:8080/p?***#***`. Used for error text, where the
    URL is shown because it did not validate and so cannot be trusted to be free of secrets.
    """
    match = _URL_PARTS_RE.match(value)
    scheme, rest = (match["scheme"] or "", match["rest"]) if match else ("", value)
    rest, hash_, _ = rest.partition("#")
    rest, query, _ = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return scheme + authority + slash + path + ("?***" if query else "") + ("#***" if hash_ else "")


def quoted(text: str, limit: int = 200) -> str:
    """A value quoted for an error message: shortened, and masked like a URL when it may carry credentials."""
    return repr((mask_url(text) if _may_hold_credentials(text) else text)[:limit])


def read_secret_file(path: Path) -> str:
    """The secret in a mounted file, one trailing newline stripped (`echo key > file` and Kubernetes both work).

    Raises ValueError with the reason, never the content: a file that is not text may still be a secret.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {quoted(str(path))}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"{quoted(str(path))} is larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{quoted(str(path))} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"{quoted(str(path))} is empty")
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"{quoted(str(path))} holds more than one line")
    return text


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True, case_sensitive=False
    )

    bifrost_url: str = Field(
        default="http://localhost:8080", description="base URL of the gateway (http or https)"
    )
    providers: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_PROVIDERS, description="provider ids to poll, comma-separated; no duplicates"
    )
    virtual_key: SecretStr | None = Field(
        default=None, description="sent as x-bf-vk (secret: prefer virtual_key_file; flags show in ps)"
    )
    virtual_key_file: Path | None = Field(
        default=None, description="file holding virtual_key; re-read on SIGHUP"
    )
    basic_auth_username: SecretStr | None = Field(default=None, description="gateway admin basic-auth user")
    basic_auth_password: SecretStr | None = Field(
        default=None, description="gateway admin basic-auth password (secret: prefer the _file setting)"
    )
    basic_auth_password_file: Path | None = Field(
        default=None, description="file holding basic_auth_password; re-read on SIGHUP"
    )
    bearer_token: SecretStr | None = Field(
        default=None, description="sent as Authorization: Bearer (secret: prefer bearer_token_file)"
    )
    bearer_token_file: Path | None = Field(
        default=None, description="file holding bearer_token; re-read on SIGHUP"
    )
    extra_headers: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="more request headers, as JSON or name=value"
    )
    tls_verify: bool = Field(default=True, description="verify the gateway's TLS certificate")
    ca_file: Path | None = Field(default=None, description="CA bundle for the gateway's certificate")
    poll_interval_seconds: float = Field(
        default=30.0, ge=1, description="seconds between the starts of two polls of one provider"
    )
    request_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, description="timeout of each HTTP request, seconds"
    )
    page_size: int = Field(default=100, ge=1, le=1000, description="limit sent on each list request")
    max_pages: int = Field(
        default=200, ge=1, le=100_000, description="pages per provider per poll before it stops as truncated"
    )
    max_retries: int = Field(
        default=3, ge=0, le=20, description="retries of one request on timeout, connection error, 429, 5xx"
    )
    stale_after_seconds: float | None = Field(
        default=None,
        gt=0,
        description="drop a provider's batch series after this long without a complete poll "
        "(default 5 x poll_interval_seconds)",
    )
    per_batch_metrics: bool = Field(default=False, description="expose the bifrost_batch_job_* series")
    per_batch_limit: int = Field(
        default=500, ge=1, le=10_000, description="cap of per-batch series per provider"
    )
    duration_buckets: Annotated[tuple[float, ...], NoDecode] = Field(
        default=DEFAULT_DURATION_BUCKETS, description="buckets of bifrost_batch_duration_seconds"
    )
    latency_buckets: Annotated[tuple[float, ...], NoDecode] = Field(
        default=DEFAULT_LATENCY_BUCKETS, description="buckets of bifrost_batch_upstream_latency_seconds"
    )
    listen_address: str = Field(
        default="0.0.0.0:9877", description="HOST:PORT to serve on (also --web.listen-address)"
    )
    web_config_file: Path | None = Field(
        default=None, description="exporter-toolkit web config: TLS, basic auth (also --web.config.file)"
    )
    telemetry_path: str = Field(
        default="/metrics", description="path of the metrics (also --web.telemetry-path)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="debug, info, warning or error"
    )
    log_format: Literal["json", "console", "auto"] = Field(
        default="auto", description="json, console, or auto (console on a terminal)"
    )
    max_response_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="largest list-page body accepted, bytes"
    )
    metadata_labels: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="batch metadata keys exposed as metadata_<key> labels (at most 3)"
    )
    state_dir: Path | None = Field(
        default=None, description="directory of the durable ledger; unset = nothing survives a restart"
    )
    poll_mode: Literal["incremental", "full"] = Field(
        default="incremental", description="incremental (full list every resync_interval_seconds) or full"
    )
    resync_interval_seconds: float = Field(
        default=600.0, gt=0, description="seconds between full lists of one provider in incremental mode"
    )
    max_requests_per_second: float = Field(
        default=10.0, gt=0, le=10_000, description="per provider, list and retrieve together"
    )
    risk_no_progress_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="fraction of the completion window after which an active batch with no finished "
        "request is at risk",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (pydantic-settings' CliSettingsSource, passed by the CLI) → env → YAML → defaults.

        The YAML mapping travels in pydantic-settings' own InitSettingsSource; load_settings parses the file
        itself because YamlConfigSettingsSource reports a broken or non-mapping file as a bare traceback.
        Its SecretsSettingsSource is not used: it reads one directory named after the fields, where the
        contract's *_file settings name a file each and are re-read on SIGHUP.
        """
        return (init_settings, env_settings, InitSettingsSource(settings_cls, dict(_yaml_values.get())))

    @field_validator("providers", "duration_buckets", "latency_buckets", "metadata_labels", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("bifrost_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", value):
            raise ValueError("must be an http:// or https:// URL without query or fragment")
        if "@" in value.split("://", 1)[1].split("/", 1)[0]:
            # Credentials in the URL would be printed by --check-config and logged at start.
            raise ValueError("must not contain credentials; use basic_auth_username/basic_auth_password")
        return value.rstrip("/")

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

    @field_validator("metadata_labels")
    @classmethod
    def _metadata_labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_METADATA_LABELS:
            raise ValueError(f"at most {MAX_METADATA_LABELS} metadata keys")
        labels = [metadata_label_name(key) for key in value]
        if len(set(labels)) != len(labels):
            raise ValueError("two keys map to the same label name after sanitising")
        return value

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path | None) -> Path | None:
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError(f"{quoted(str(value))} exists and is not a directory")
        return value

    @field_validator("extra_headers", mode="before")
    @classmethod
    def _headers_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except ValueError:
                raise ValueError("must be a JSON object of header names to values") from None
        return value

    @field_validator("extra_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if not _HEADER_RE.match(name):
                raise ValueError(f"{quoted(name, 70)} is not a valid header name")
            if "\r" in header_value or "\n" in header_value:
                raise ValueError(f"value of header {name!r} contains a line break")
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

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        """Fill each secret from its *_file twin before validation, so every later check sees the value."""
        if not isinstance(data, dict):
            return data
        for secret, file_setting in SECRET_FILES.items():
            path = data.get(file_setting)
            if path is None or not isinstance(path, str | Path):
                continue
            if data.get(secret) is not None:
                raise ValueError(f"{file_setting}: {secret} is set too; set only one of them")
            try:
                data[secret] = read_secret_file(Path(path))
            except ValueError as exc:
                raise ValueError(f"{file_setting}: {exc}") from None
        return data

    @model_validator(mode="after")
    def _combinations(self) -> Settings:
        if (self.basic_auth_username is None) != (self.basic_auth_password is None):
            raise ValueError("basic_auth_username and basic_auth_password must be set together")
        if self.bearer_token is not None and self.basic_auth_username is not None:
            raise ValueError("bearer_token and basic_auth_username/basic_auth_password both set: choose one")
        if self.resync_interval_seconds < self.poll_interval_seconds:
            raise ValueError("resync_interval_seconds must be >= poll_interval_seconds")
        if self.stale_after_seconds is not None and self.stale_after_seconds < self.poll_interval_seconds:
            raise ValueError("stale_after_seconds must be >= poll_interval_seconds")
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

    def basic_auth_token(self) -> str | None:
        """base64(user:password) as the Authorization header carries it, or None without basic auth."""
        if self.basic_auth_username is None or self.basic_auth_password is None:
            return None
        pair = f"{self.basic_auth_username.get_secret_value()}:{self.basic_auth_password.get_secret_value()}"
        return base64.b64encode(pair.encode()).decode("ascii")

    def secret_values(self) -> list[str]:
        """Every secret string in every spelling we send, for the redactors of logs and failure details.

        Header values count, as they often carry keys; basic auth also travels base64-encoded.
        """
        values = [s.get_secret_value() for s in (getattr(self, f) for f in SECRET_FIELDS) if s is not None]
        values.extend(self.extra_headers.values())
        token = self.basic_auth_token()
        if token is not None:
            values.append(token)
        return [v for v in values if len(v) >= 4]

    def reread_secret_files(self) -> Settings:
        """These settings with every *_file secret read again (SIGHUP): a rotated Secret is used on the next poll.

        Raises ConfigError naming the setting when a file cannot be used; the caller keeps the old credentials.
        """
        update: dict[str, Any] = {}
        for secret, file_setting in SECRET_FILES.items():
            path = getattr(self, file_setting)
            if path is None:
                continue
            try:
                update[secret] = SecretStr(read_secret_file(path))
            except ValueError as exc:
                raise ConfigError(f"invalid setting {file_setting}: {exc}") from None
        return self.model_copy(update=update) if update else self

    def masked(self) -> dict[str, Any]:
        """The effective settings as --check-config prints them: secrets and header values replaced."""
        out = self.model_dump(mode="json")
        for name in SECRET_FIELDS:
            if out.get(name) is not None:
                out[name] = MASK
        out["extra_headers"] = {k: MASK for k in self.extra_headers}
        out["stale_after_seconds"] = self.stale_after
        return out


def metadata_label_name(key: str) -> str:
    """The label a metadata key becomes: `metadata_` + the key with every character outside [a-zA-Z0-9_] as `_`."""
    if not key:
        raise ValueError("metadata keys must not be empty")
    return "metadata_" + _LABEL_CHAR_RE.sub("_", key)


def parse_listen_address(value: str) -> tuple[str, int]:
    match = re.match(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$", value)
    if not match:
        raise ValueError("must be HOST:PORT (IPv6 as [ADDR]:PORT)")
    port = int(match.group("port"))
    if port > 65535:
        raise ValueError("port must be 0-65535")
    host = match.group("v6") or match.group("host") or "0.0.0.0"
    return host, port


def read_yaml_document(path: Path, setting: str) -> Any:
    """The YAML document in a file a setting names, or ConfigError naming that setting and the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"invalid setting {setting}: cannot read {str(path)!r}: {reason}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"invalid setting {setting}: {str(path)!r} is not valid YAML: {exc}".replace("\n", " ")
        ) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    doc = read_yaml_document(path, "config")
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"invalid setting config: {str(path)!r} must be a YAML mapping of setting names")
    return {str(k): v for k, v in doc.items()}


def _source_of(
    name: str,
    flags: Collection[str],
    environ: Mapping[str, str],
    yaml_values: Mapping[str, Any],
    config_path: Path | None,
) -> str:
    if name in flags:
        return "from the command line"
    env_name = ENV_PREFIX + name.upper()
    if any(k.upper() == env_name for k in environ):
        return f"from environment {env_name}"
    if name in yaml_values:
        return f"from config file {config_path}"
    return "default"


def load_settings(
    flags: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    *,
    cli: tuple[CliSettingsSource[Any], Collection[str]] | None = None,
) -> Settings:
    """Build Settings from every source, or raise ConfigError with one line naming the bad setting.

    `flags` are values given in code (tests, --demo); `cli` is pydantic-settings' CliSettingsSource with the
    parsed command line and the names of the settings it holds, so an error can say they came from there.
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    from_command_line = set(flags) | set(cli[1] if cli is not None else ())
    environ = os.environ
    if config_file is None and environ.get(CONFIG_ENV):
        config_file = Path(environ[CONFIG_ENV])
    yaml_values = _read_yaml(config_file) if config_file is not None else {}
    token = _yaml_values.set(yaml_values)
    try:
        if cli is not None:
            return Settings(_cli_settings_source=cli[0], **flags)
        return Settings(**flags)
    except SettingsError as exc:
        raise ConfigError(f"invalid settings: {_first_line(str(exc))}") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = [str(p) for p in err["loc"]]
            name = loc[0] if loc else ""
            msg = err["msg"].removeprefix("Value error, ")
            if not name:
                # A model-level check names its setting first ("virtual_key_file: ..."), or several in the text.
                named = re.match(r"^([a-z_]+): (.*)$", msg, re.DOTALL)
                if named and named[1] in Settings.model_fields:
                    source = _source_of(named[1], from_command_line, environ, yaml_values, config_file)
                    problems.append(f"invalid setting {named[1]} ({source}): {named[2]}")
                else:
                    problems.append(msg)
                continue
            if err["type"] == "extra_forbidden":
                origin = f"in config file {config_file}" if name in yaml_values else "given"
                problems.append(f"unknown setting {name!r} {origin}")
                continue
            source = _source_of(name, from_command_line, environ, yaml_values, config_file)
            problems.append(f"invalid setting {name}{shown_value(name, err.get('input'))} ({source}): {msg}")
        raise ConfigError("; ".join(problems)) from None
    finally:
        _yaml_values.reset(token)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unreadable value"


def shown_value(name: str, value: Any) -> str:
    """`=<value>` for an error message, or "" when the value may hold a secret.

    Secrets, header values and anything that is not a plain scalar are never shown; strings that look like a URL
    are shown with userinfo, query and fragment masked (a key often rides in `?api_key=`).
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
