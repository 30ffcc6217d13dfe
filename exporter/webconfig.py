"""TLS and basic auth for our own HTTP server, from a Prometheus exporter-toolkit web-config file.

Operators already have these files for node_exporter and friends, so we read the same schema
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md) and refuse anything we do
not understand rather than silently serving less securely than the file asks for. The file — and every certificate,
key and CA file it names — is watched: a change (or SIGHUP) is picked up for the next connection, so certificates
rotate without a restart. A reload that fails keeps the previous, working configuration and logs why.

What the Python TLS stack cannot express is mapped to the safe side and said so at start:
`RequestClientCert` asks for nothing (the toolkit does not verify such certificates either), `RequireAnyClientCert`
becomes `RequireAndVerifyClientCert` (a `client_ca_file` is then required), `client_allowed_sans` is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import ssl
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import bcrypt
import structlog

from .settings import ConfigError, read_yaml_document

REALM: Final = "bifrost-batch-exporter"
OPEN_PATHS: Final = frozenset({"/healthz"})

_TOP_KEYS: Final = frozenset({"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"})
_TLS_KEYS: Final = frozenset(
    {
        "cert",
        "key",
        "client_ca",
        "cert_file",
        "key_file",
        "client_auth_type",
        "client_ca_file",
        "client_allowed_sans",
        "min_version",
        "max_version",
        "cipher_suites",
        "prefer_server_cipher_suites",
        "curve_preferences",
    }
)
_HTTP_KEYS: Final = frozenset({"http2", "headers"})
_RATE_KEYS: Final = frozenset({"interval", "burst"})

# The response headers the toolkit lets an operator set, with the values it accepts (None: any).
_HEADERS: Final[Mapping[str, frozenset[str] | None]] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": frozenset({"deny", "sameorigin"}),
    "X-Content-Type-Options": frozenset({"nosniff"}),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}

_VERSIONS: Final = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH_TYPES: Final = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
# Go's crypto/tls names (tls.CipherSuites(), the set the toolkit accepts) → OpenSSL names. TLS 1.3 suites are not
# configurable in Go either; naming them is accepted and changes nothing.
_CIPHERS: Final = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}
_TLS13_SUITES: Final = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
)

_BCRYPT_RE: Final = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
# Compared against when the user name is unknown, so a wrong name costs as much as a wrong password.
_DUMMY_HASH: Final = b"$2b$10$dSMC.rUtVomYu1EoneD9EeBp8ENq39EBhZhdPADmIjUQRx3YO3aQO"

POSITIVE_CACHE_SIZE: Final = 256
NEGATIVE_CACHE_SIZE: Final = 1024
# bcrypt runs on the event loop (~70 ms at cost 10); uncached checks beyond this budget are refused outright, so a
# flood of guessed passwords cannot starve scrapes. Credentials that already passed are cached and never wait.
BCRYPT_PER_SECOND: Final = 4.0
BCRYPT_BURST: Final = 8.0
RELOAD_CHECK_SECONDS: Final = 1.0


class WebConfigError(ConfigError):
    """The web-config file is unusable; str() is the one line printed before exit 2."""


# --- parsed configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = field(default=None, repr=False)
    key: str | None = field(default=None, repr=False)
    client_ca_file: Path | None = None
    client_ca: str | None = field(default=None, repr=False)
    client_auth_type: str = "NoClientCert"
    verify_mode: ssl.VerifyMode = ssl.CERT_NONE
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: str | None = None
    prefer_server_ciphers: bool = True

    def files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.cert_file, self.key_file, self.client_ca_file) if p is not None)


@dataclass(frozen=True, slots=True)
class WebConfig:
    path: Path
    tls: TlsConfig | None
    users: Mapping[str, bytes] = field(repr=False)
    headers: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...]

    def files(self) -> tuple[Path, ...]:
        return (self.path, *(self.tls.files() if self.tls is not None else ()))


class _Problems:
    """Collects the file's problems so one run names all of them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}" if where else message)

    def raise_if_any(self) -> None:
        if self.errors:
            raise WebConfigError(f"invalid setting web_config_file ({self.path}): " + "; ".join(self.errors))


def _mapping(value: Any, where: str, problems: _Problems) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.error(where, f"must be a mapping, not {type(value).__name__}")
        return {}
    return {str(k): v for k, v in value.items()}


def _unknown(values: Mapping[str, Any], allowed: frozenset[str], prefix: str, problems: _Problems) -> None:
    for key in values:
        if key not in allowed:
            problems.error("", f"unknown key {prefix + key[:80]!r}")


def _string(value: Any, where: str, problems: _Problems) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        problems.error(where, f"must be a string, not {type(value).__name__}")
        return None
    return value


def _string_list(value: Any, where: str, problems: _Problems) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.error(where, "must be a list of strings")
        return []
    return list(value)


def _file(value: Any, where: str, base: Path, problems: _Problems) -> Path | None:
    text = _string(value, where, problems)
    if text is None:
        return None
    path = Path(text)
    if not path.is_absolute():
        path = base / path  # like the toolkit: relative to the web-config file's directory
    if not path.is_file():
        problems.error(where, f"file {str(path)[:200]!r} does not exist or is not a file")
    return path


def _parse_tls(raw: Any, base: Path, problems: _Problems) -> TlsConfig | None:
    values = _mapping(raw, "tls_server_config", problems)
    _unknown(values, _TLS_KEYS, "tls_server_config.", problems)
    if not any(v not in (None, "", []) for v in values.values()):
        return None
    p = "tls_server_config."
    cert_file = _file(values.get("cert_file"), p + "cert_file", base, problems)
    key_file = _file(values.get("key_file"), p + "key_file", base, problems)
    cert = _string(values.get("cert"), p + "cert", problems)
    key = _string(values.get("key"), p + "key", problems)
    ca_file = _file(values.get("client_ca_file"), p + "client_ca_file", base, problems)
    ca = _string(values.get("client_ca"), p + "client_ca", problems)
    if cert_file is not None and cert is not None:
        problems.error(p + "cert", "set either cert or cert_file, not both")
    if key_file is not None and key is not None:
        problems.error(p + "key", "set either key or key_file, not both")
    if ca_file is not None and ca is not None:
        problems.error(p + "client_ca", "set either client_ca or client_ca_file, not both")
    if cert_file is None and cert is None:
        problems.error(p + "cert_file", "missing: TLS needs a certificate (cert_file or cert)")
    if key_file is None and key is None:
        problems.error(p + "key_file", "missing: TLS needs a private key (key_file or key)")

    auth = _string(values.get("client_auth_type"), p + "client_auth_type", problems) or "NoClientCert"
    has_ca = ca_file is not None or ca is not None
    verify_mode = ssl.CERT_NONE
    if auth not in _CLIENT_AUTH_TYPES:
        problems.error(p + "client_auth_type", f"{auth[:60]!r} is not one of {', '.join(_CLIENT_AUTH_TYPES)}")
    elif auth == "RequestClientCert":
        problems.warnings.append(
            "client_auth_type RequestClientCert neither requires nor verifies client certificates; "
            "served as NoClientCert"
        )
    elif auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert", "RequireAnyClientCert"):
        if not has_ca:
            problems.error(
                p + "client_ca_file", f"client_auth_type {auth} needs client_ca_file (or client_ca)"
            )
        verify_mode = ssl.CERT_OPTIONAL if auth == "VerifyClientCertIfGiven" else ssl.CERT_REQUIRED
        if auth == "RequireAnyClientCert":
            problems.warnings.append(
                "client_auth_type RequireAnyClientCert is enforced as RequireAndVerifyClientCert "
                "(client certificates must chain to client_ca_file)"
            )
    if _string_list(values.get("client_allowed_sans"), p + "client_allowed_sans", problems):
        problems.error(
            p + "client_allowed_sans",
            "is not supported by this exporter (remove it, or terminate TLS elsewhere)",
        )

    versions: list[ssl.TLSVersion] = []
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        text = _string(values.get(name), p + name, problems) or default
        if text not in _VERSIONS:
            problems.error(p + name, f"{text[:40]!r} is not one of {', '.join(_VERSIONS)}")
            versions.append(_VERSIONS[default])
        else:
            versions.append(_VERSIONS[text])
    if versions[0] > versions[1]:
        problems.error(p + "min_version", "is above max_version")

    ciphers: list[str] = []
    for name in _string_list(values.get("cipher_suites"), p + "cipher_suites", problems):
        if name in _CIPHERS:
            ciphers.append(_CIPHERS[name])
        elif name not in _TLS13_SUITES:
            problems.error(p + "cipher_suites", f"unknown or insecure cipher suite {name[:80]!r}")
    if _string_list(values.get("curve_preferences"), p + "curve_preferences", problems):
        problems.warnings.append("tls_server_config.curve_preferences is ignored (OpenSSL's defaults apply)")
    prefer = values.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        problems.error(p + "prefer_server_cipher_suites", "must be true or false")
        prefer = True
    return TlsConfig(
        cert_file=cert_file,
        key_file=key_file,
        cert=cert,
        key=key,
        client_ca_file=ca_file,
        client_ca=ca,
        client_auth_type=auth,
        verify_mode=verify_mode,
        min_version=versions[0],
        max_version=versions[1],
        ciphers=":".join(dict.fromkeys(ciphers)) or None,
        prefer_server_ciphers=prefer,
    )


def _parse_users(raw: Any, problems: _Problems) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    if raw is None:
        return users
    if not isinstance(raw, dict):
        problems.error("basic_auth_users", "must be a mapping of user name to bcrypt hash")
        return users
    for name, hashed in raw.items():
        if isinstance(name, bool) or not isinstance(name, str | int):
            problems.error("basic_auth_users", f"user name {str(name)[:40]!r} must be a string")
            continue
        user = str(name)
        where = f"basic_auth_users.{user[:60]}"
        if not user or ":" in user:
            problems.error(where, "a user name must be non-empty and contain no ':'")
            continue
        # The hash is not shown: the toolkit treats it as a secret, and it is one an attacker could crack offline.
        if not isinstance(hashed, str) or not _BCRYPT_RE.match(hashed.strip()):
            problems.error(
                where, "is not a bcrypt hash ($2a$/$2b$/$2y$, cost 04-31, 53 characters of salt and hash)"
            )
            continue
        users[user] = hashed.strip().encode("ascii")
    return users


def _parse_http(raw: Any, problems: _Problems) -> tuple[tuple[str, str], ...]:
    values = _mapping(raw, "http_server_config", problems)
    _unknown(values, _HTTP_KEYS, "http_server_config.", problems)
    http2 = values.get("http2")
    if http2 is not None and not isinstance(http2, bool):
        problems.error("http_server_config.http2", "must be true or false")
    # http2 is accepted and has no effect: this server speaks HTTP/1.1, which every Prometheus speaks too.
    headers_raw = _mapping(values.get("headers"), "http_server_config.headers", problems)
    canonical = {name.lower(): name for name in _HEADERS}
    out: list[tuple[str, str]] = []
    for name, value in headers_raw.items():
        where = f"http_server_config.headers.{name[:60]}"
        proper = canonical.get(name.lower())
        if proper is None:
            problems.error(where, f"header cannot be configured (allowed: {', '.join(_HEADERS)})")
            continue
        text = _string(value, where, problems)
        if text is None:
            continue
        if "\r" in text or "\n" in text or not text.isprintable():
            problems.error(where, "value contains a control character")
            continue
        accepted = _HEADERS[proper]
        if accepted is not None and text.lower() not in accepted:
            problems.error(where, f"value must be one of {', '.join(sorted(accepted))}")
            continue
        out.append((proper, text))
    return tuple(out)


def parse_web_config(doc: Any, path: Path) -> WebConfig:
    """Validate a parsed web-config document; raises WebConfigError naming every bad key."""
    problems = _Problems(path)
    values = _mapping(doc, "", problems)
    _unknown(values, _TOP_KEYS, "", problems)
    tls = _parse_tls(values.get("tls_server_config"), path.parent, problems)
    headers = _parse_http(values.get("http_server_config"), problems)
    users = _parse_users(values.get("basic_auth_users"), problems)
    rate = _mapping(values.get("rate_limit"), "rate_limit", problems)
    _unknown(rate, _RATE_KEYS, "rate_limit.", problems)
    if rate:
        problems.warnings.append("rate_limit is ignored by this exporter")
    problems.raise_if_any()
    return WebConfig(path, tls, MappingProxyType(users), headers, tuple(problems.warnings))


def load_web_config(path: Path) -> WebConfig:
    try:
        doc = read_yaml_document(path, "web_config_file")
    except ConfigError as exc:
        raise WebConfigError(str(exc)) from None
    return parse_web_config(doc, path)


# --- TLS -----------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _pem_path(inline: str | None, file: Path | None) -> Iterator[str | None]:
    """A path for load_cert_chain: the file itself, or inline PEM in an anonymous memory file (never on disk)."""
    if inline is None:
        yield None if file is None else str(file)
        return
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("pem", os.MFD_CLOEXEC)
        try:
            os.write(fd, inline.encode())
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as tmp:  # pragma: no cover - non-Linux
        tmp.write(inline)
        tmp.flush()
        yield tmp.name


def _no_password() -> bytes:
    return b""  # an encrypted key must fail to load, never prompt on a terminal


def build_ssl_context(tls: TlsConfig, path: Path) -> ssl.SSLContext:
    """A server SSLContext for `tls`; WebConfigError when a certificate, key or CA does not load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = tls.min_version
        ctx.maximum_version = tls.max_version
    except (ValueError, ssl.SSLError) as exc:
        raise WebConfigError(f"invalid setting web_config_file ({path}): TLS version: {exc}") from None
    where = "tls_server_config.cert_file/key_file"
    try:
        with _pem_path(tls.cert, tls.cert_file) as cert, _pem_path(tls.key, tls.key_file) as key:
            assert cert is not None
            ctx.load_cert_chain(cert, key, password=_no_password)
        where = "tls_server_config.client_ca_file"
        if tls.client_ca is not None:
            ctx.load_verify_locations(cadata=tls.client_ca)
        elif tls.client_ca_file is not None:
            ctx.load_verify_locations(cafile=str(tls.client_ca_file))
        where = "tls_server_config.cipher_suites"
        if tls.ciphers is not None:
            ctx.set_ciphers(tls.ciphers)
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise WebConfigError(
            f"invalid setting web_config_file ({path}): {where}: cannot load ({reason})"
        ) from None
    ctx.verify_mode = tls.verify_mode
    if tls.prefer_server_ciphers:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


# --- basic auth ----------------------------------------------------------------------------------------------------


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes, with bounded caches and a bcrypt budget."""

    def __init__(self, users: Mapping[str, bytes], clock: Callable[[], float] = time.monotonic) -> None:
        self._users = users
        self._clock = clock
        # Cache keys are keyed hashes of user:password; the key lives only in this process.
        self._key = secrets.token_bytes(32)
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._bad: OrderedDict[bytes, None] = OrderedDict()
        self._tokens = BCRYPT_BURST
        self._refilled = clock()
        self.bcrypt_checks = 0
        self.refused_over_budget = 0

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def _take_token(self) -> bool:
        now = self._clock()
        self._tokens = min(BCRYPT_BURST, self._tokens + (now - self._refilled) * BCRYPT_PER_SECOND)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def check(self, authorization: str | None) -> bool:
        if not self._users:
            return True
        credentials = parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        digest = hmac.new(self._key, user + b"\x00" + password, hashlib.sha256).digest()
        if digest in self._ok:
            self._ok.move_to_end(digest)
            return True
        if digest in self._bad:
            return False
        if not self._take_token():
            self.refused_over_budget += 1
            return False
        try:
            name = user.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        hashed = self._users.get(name)
        self.bcrypt_checks += 1
        try:
            ok = bcrypt.checkpw(password, hashed or _DUMMY_HASH) and hashed is not None
        except ValueError:  # e.g. a password over bcrypt's 72 bytes, or a hash bcrypt refuses
            ok = False
        cache = self._ok if ok else self._bad
        cache[digest] = None
        if len(cache) > (POSITIVE_CACHE_SIZE if ok else NEGATIVE_CACHE_SIZE):
            cache.popitem(last=False)
        return ok


def parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from an Authorization header value, or None when it is not well-formed Basic auth."""
    if not header or len(header) > 4096:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    return user, password


# --- the live object the server uses --------------------------------------------------------------------------------


def _fingerprint(paths: Sequence[Path]) -> tuple[tuple[str, int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(path), -1, -1, -1))
    return tuple(out)


class WebSecurity:
    """The current web config as the server's Guard and TLS context, re-read when any of its files change.

    New connections get the newest certificate through the listening context's SNI callback, which swaps in the
    freshly built SSLContext; the verify mode and protocol versions are copied onto the listening context too,
    since OpenSSL takes those from it when a connection starts.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        check_interval: float = RELOAD_CHECK_SECONDS,
    ) -> None:
        self._log = structlog.get_logger("exporter.webconfig")
        self._clock = clock
        self._check_interval = check_interval
        self.path = path
        config = load_web_config(path)
        self._fingerprint = _fingerprint(config.files())
        self._current_ctx = build_ssl_context(config.tls, path) if config.tls is not None else None
        self._listening = self._current_ctx
        if self._listening is not None:
            self._listening.sni_callback = self._on_client_hello
        self.config = config
        self._auth = BasicAuth(config.users, clock)
        self._checked = clock()
        self.reloads = 0
        self.failed_reloads = 0

    # The Guard protocol ------------------------------------------------------------------------------------------

    def allows(self, path: str, headers: Mapping[str, str]) -> bool:
        self.maybe_reload()
        if path in OPEN_PATHS or not self._auth.enabled:
            return True
        return self._auth.check(headers.get("authorization"))

    def challenge(self) -> Sequence[tuple[str, str]]:
        return (("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),)

    def response_headers(self) -> Sequence[tuple[str, str]]:
        return self.config.headers

    # TLS ------------------------------------------------------------------------------------------------------------

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self._listening

    @property
    def auth(self) -> BasicAuth:
        return self._auth

    def _on_client_hello(self, ssl_obj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        self.maybe_reload()
        current = self._current_ctx
        if current is not None and current is not ctx:
            ssl_obj.context = current
        return None

    # Reloading ------------------------------------------------------------------------------------------------------

    def log_warnings(self) -> None:
        for warning in self.config.warnings:
            self._log.warning("web_config_warning", path=str(self.path), detail=warning)

    def maybe_reload(self) -> bool:
        """Reload when a watched file changed; checks at most once per check_interval. True when reloaded."""
        now = self._clock()
        if now - self._checked < self._check_interval:
            return False
        self._checked = now
        if _fingerprint(self.config.files()) == self._fingerprint:
            return False
        return self.reload("file_changed")

    def reload(self, trigger: str = "sighup") -> bool:
        """Re-read the file and every file it names now; on any problem keep the running config."""
        self._checked = self._clock()
        # The fingerprint is taken before reading, so a broken state is reported once, not at every request,
        # and any later change to these files is noticed.
        try:
            config = load_web_config(self.path)
        except WebConfigError as exc:
            self._fingerprint = _fingerprint(self.config.files())
            return self._reload_failed(trigger, exc)
        self._fingerprint = _fingerprint(config.files())
        try:
            if (config.tls is None) != (self._listening is None):
                raise WebConfigError(
                    f"invalid setting web_config_file ({self.path}): turning TLS on or off needs a restart"
                )
            ctx = build_ssl_context(config.tls, self.path) if config.tls is not None else None
        except WebConfigError as exc:
            return self._reload_failed(trigger, exc)
        if ctx is not None and self._listening is not None and config.tls is not None:
            self._listening.verify_mode = config.tls.verify_mode
            self._listening.minimum_version = config.tls.min_version
            self._listening.maximum_version = config.tls.max_version
        self._current_ctx = ctx
        if config.users != self.config.users:
            self._auth = BasicAuth(config.users, self._clock)
        self.config = config
        self.reloads += 1
        self._log.info(
            "web_config_reloaded",
            trigger=trigger,
            tls=config.tls is not None,
            basic_auth_users=len(config.users),
        )
        self.log_warnings()
        return True

    def _reload_failed(self, trigger: str, exc: WebConfigError) -> bool:
        self.failed_reloads += 1
        self._log.error("web_config_reload_failed", trigger=trigger, error=str(exc), kept="previous")
        return False

    async def watch(self, interval: float | None = None) -> None:
        """Poll the files for changes even when no request arrives (so a bad new file is reported promptly)."""
        while True:
            await asyncio.sleep(interval or self._check_interval)
            self.maybe_reload()
