"""TLS, basic auth and a rate limit for our own HTTP server, from a Prometheus exporter-toolkit web-config file.

Operators already have these files for node_exporter and friends, so we read the same schema
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md) with the toolkit's outcomes:
what it accepts we accept and serve the same way, what it refuses we refuse, and anything we do not understand is
refused rather than silently served less securely than the file asks. docs/security.md has the key-by-key table,
with the few places Python's `ssl` forces a difference. The file, and every certificate, key and CA file it names,
is watched: a change (or SIGHUP) applies from the next TLS handshake or request on, as in Go, so certificates
rotate without a restart.
A reload that fails keeps the previous, working configuration and logs why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import structlog

from .basicauth import ALLOWED, TOO_MANY, BasicAuth, TokenBucket, parse_basic
from .settings import ConfigError, read_yaml_document

__all__ = ["BasicAuth", "WebConfigError", "WebSecurity", "load_web_config", "parse_basic", "parse_web_config"]

REALM: Final = "bifrost-batch-exporter"
# Liveness probes are never refused (not by auth, not by the rate limit): a kubelet must not restart a pod because
# someone floods it or because it has no password.
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
# The toolkit's IsEnabled(): TLS is on when any of these is set; min_version and friends alone leave plain HTTP.
_TLS_ENABLING: Final = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
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
# client_auth_type → the verify mode of Python's ssl.
_CLIENT_AUTH: Final[Mapping[str, ssl.VerifyMode]] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# The toolkit's types that ask for a certificate and accept it unverified (RequireClientCert is the old spelling of
# RequireAnyClientCert). Python's ssl can only ask for a certificate together with chain verification; doing it
# anyway meant writing into OpenSSL through CPython's object layout, so they are refused (docs/security.md).
_UNVERIFIED_CLIENT_AUTH: Final = frozenset({"RequestClientCert", "RequireAnyClientCert", "RequireClientCert"})
# Go's curve names (the toolkit's list) → OpenSSL's names for them.
_CURVES: Final = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}
# A list of key-exchange groups needs SSLContext.set_groups (Python 3.14); before it, set_ecdh_curve takes one.
_SET_GROUPS: Final = hasattr(ssl.SSLContext, "set_groups")
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
_DURATION_RE: Final = re.compile(r"^(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$")
_DURATION_PART_RE: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

_BCRYPT_RE: Final = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
# How often a handshake or request looks for a changed file: every time (Go re-reads the file for every handshake
# and request; a look here is a stat() of each file, a few microseconds).
RELOAD_CHECK_SECONDS: Final = 0.0
# How often the watcher looks when no connection does, so a broken new file is reported without traffic.
WATCH_SECONDS: Final = 1.0


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
    client_allowed_sans: tuple[str, ...] = ()
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: str | None = None
    curves: tuple[str, ...] = ()  # OpenSSL curve names, most preferred first
    prefer_server_ciphers: bool = True

    def files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.cert_file, self.key_file, self.client_ca_file) if p is not None)


@dataclass(frozen=True, slots=True)
class RateLimit:
    interval: float  # seconds per request once the burst is spent
    burst: int


@dataclass(frozen=True, slots=True)
class WebConfig:
    path: Path
    tls: TlsConfig | None
    users: Mapping[str, bytes] = field(repr=False)
    headers: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...]
    rate_limit: RateLimit | None = None

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


# The shape of every web-config key (exporter-toolkit's are snake_case words). A key of any other shape is not shown:
# a YAML mistake next to an inline `key: |` block turns a line of the private key into a "key".
_KEY_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def _unknown(values: Mapping[str, Any], allowed: frozenset[str], prefix: str, problems: _Problems) -> None:
    for key in values:
        if key not in allowed:
            if _KEY_SHAPE.fullmatch(key):
                problems.error("", f"unknown key {prefix + key!r}")
            else:
                problems.error(
                    "", f"an unknown key under {prefix or 'the top level'!r} (not shown: not a key's shape)"
                )


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
    p = "tls_server_config."
    # Every field is validated, but only the toolkit's IsEnabled() fields turn TLS on.
    enabled = any(values.get(k) not in (None, "") for k in _TLS_ENABLING)
    cert_file = _file(values.get("cert_file"), p + "cert_file", base, problems) if enabled else None
    key_file = _file(values.get("key_file"), p + "key_file", base, problems) if enabled else None
    cert = _string(values.get("cert"), p + "cert", problems)
    key = _string(values.get("key"), p + "key", problems)
    ca_file = _file(values.get("client_ca_file"), p + "client_ca_file", base, problems) if enabled else None
    ca = _string(values.get("client_ca"), p + "client_ca", problems)
    if enabled:
        if cert_file is not None and cert is not None:
            problems.error(p + "cert", "set either cert or cert_file, not both")
        if key_file is not None and key is not None:
            problems.error(p + "key", "set either key or key_file, not both")
        if ca_file is not None and ca is not None:
            problems.error(p + "client_ca", "set either client_ca or client_ca_file, not both")
        if cert_file is None and cert is None:
            problems.error(p + "cert_file", "missing one of cert or cert_file")
        if key_file is None and key is None:
            problems.error(p + "key_file", "missing one of key or key_file")

    auth = _string(values.get("client_auth_type"), p + "client_auth_type", problems) or "NoClientCert"
    verify_mode = ssl.CERT_NONE
    if auth in _UNVERIFIED_CLIENT_AUTH:
        problems.error(
            p + "client_auth_type",
            f"{auth} is not supported: Python's ssl cannot ask for a client certificate without verifying it "
            "(and an unverified certificate authenticates nothing: anyone can make one with any name); use "
            "RequireAndVerifyClientCert or VerifyClientCertIfGiven with client_ca_file",
        )
    elif auth not in _CLIENT_AUTH:
        problems.error(
            p + "client_auth_type",
            f"invalid ClientAuth: {auth[:60]!r} (one of {', '.join(_CLIENT_AUTH)})",
        )
    else:
        verify_mode = _CLIENT_AUTH[auth]
        if auth == "NoClientCert" and (ca_file is not None or ca is not None):
            problems.error(
                p + "client_ca_file", "client CA's have been configured without a Client Auth Policy"
            )
    sans = tuple(_string_list(values.get("client_allowed_sans"), p + "client_allowed_sans", problems))
    if sans and auth == "NoClientCert":
        problems.error(
            p + "client_allowed_sans", "needs a client_auth_type that asks for client certificates"
        )

    versions: list[ssl.TLSVersion] = []
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        text = _string(values.get(name), p + name, problems) or default
        if text not in _VERSIONS:
            problems.error(p + name, f"unknown TLS version: {text[:40]!r} (one of {', '.join(_VERSIONS)})")
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
            problems.error(p + "cipher_suites", f"unknown cipher: {name[:80]!r}")
    curves: list[str] = []
    for name in _string_list(values.get("curve_preferences"), p + "curve_preferences", problems):
        if name in _CURVES:
            curves.append(_CURVES[name])
        else:
            problems.error(
                p + "curve_preferences", f"unknown curve: {name[:80]!r} (one of {', '.join(_CURVES)})"
            )
    curves = list(dict.fromkeys(curves))
    if len(curves) > 1 and not _SET_GROUPS:
        problems.error(
            p + "curve_preferences",
            f"lists {len(curves)} curves; this Python ({sys.version_info.major}.{sys.version_info.minor}) can "
            "restrict key exchange to one curve only (a list needs Python 3.14's ssl.SSLContext.set_groups): "
            "list one curve, or none for OpenSSL's defaults",
        )
    prefer = values.get("prefer_server_cipher_suites", True)
    if prefer is None:
        prefer = True
    if not isinstance(prefer, bool):
        problems.error(p + "prefer_server_cipher_suites", "must be true or false")
        prefer = True
    if not enabled:
        return None
    return TlsConfig(
        cert_file=cert_file,
        key_file=key_file,
        cert=cert,
        key=key,
        client_ca_file=ca_file,
        client_ca=ca,
        client_auth_type=auth,
        verify_mode=verify_mode,
        client_allowed_sans=sans,
        min_version=versions[0],
        max_version=versions[1],
        ciphers=":".join(dict.fromkeys(ciphers)) or None,
        curves=tuple(curves),
        prefer_server_ciphers=prefer,
    )


_USER_SHAPE = re.compile(r"[A-Za-z0-9._@+-]{1,64}")


def _parse_users(raw: Any, problems: _Problems) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    if raw is None:
        return users
    if not isinstance(raw, dict):
        problems.error("basic_auth_users", "must be a mapping of user name to bcrypt hash")
        return users
    for number, (name, hashed) in enumerate(raw.items(), 1):
        # A user name is shown only when it looks like one: a YAML slip (`? other: '$2b$…'`, a lost indentation)
        # can make a hash or a key's line the "name".
        shown = (
            str(name) if _USER_SHAPE.fullmatch(str(name)) else f"#{number} (not shown: not a plain user name)"
        )
        if isinstance(name, bool) or not isinstance(name, str | int):
            problems.error("basic_auth_users", f"user name {shown} must be a string")
            continue
        user = str(name)
        where = f"basic_auth_users.{shown}"
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


def _scalar_text(value: Any, where: str, problems: _Problems) -> str | None:
    """A header value as the toolkit reads it: any YAML scalar as its text (`X-XSS-Protection: 1` is "1")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return _string(value, where, problems)


def _duration(value: Any, where: str, problems: _Problems) -> float | None:
    """Seconds from a Go duration ("1s", "1m30s", "250ms"); 0 (the number) means unset, as in the toolkit."""
    if value is None or value == 0 or value == "":
        return None
    if isinstance(value, str) and _DURATION_RE.match(value.strip()):
        return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(value.strip())) or None
    problems.error(where, "must be a duration such as 1s, 250ms or 1m30s")
    return None


def _parse_rate_limit(raw: Any, problems: _Problems) -> RateLimit | None:
    values = _mapping(raw, "rate_limit", problems)
    _unknown(values, _RATE_KEYS, "rate_limit.", problems)
    interval = _duration(values.get("interval"), "rate_limit.interval", problems)
    burst = values.get("burst", 0)
    if burst is None:
        burst = 0
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
        problems.error("rate_limit.burst", "must be a whole number, 0 or more")
        return None
    # As golang.org/x/time/rate: no interval, no limit; a burst of 0 admits nothing.
    return RateLimit(interval, burst) if interval is not None else None


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
        text = _scalar_text(value, where, problems)
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
    rate_limit = _parse_rate_limit(values.get("rate_limit"), problems)
    problems.raise_if_any()
    return WebConfig(path, tls, MappingProxyType(users), headers, tuple(problems.warnings), rate_limit)


def _as_web_config_error(path: Path, exc: Exception) -> WebConfigError:
    """A failure the loader did not foresee, said without its message: the message of an exception raised while
    reading a file of credentials may quote one."""
    if isinstance(exc, WebConfigError):
        return exc
    return WebConfigError(f"invalid setting web_config_file ({path}): cannot be used ({type(exc).__name__})")


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


class ServerContext(ssl.SSLContext):
    """A server SSLContext that carries the rest of its TLS section, so a connection is judged by the config it
    started its handshake with, even when a reload lands before the handshake ends."""

    client_allowed_sans: tuple[str, ...] = ()


def build_ssl_context(tls: TlsConfig, path: Path) -> ServerContext:
    """A server SSLContext for `tls`; WebConfigError when a certificate, key or CA does not load."""
    ctx = ServerContext(ssl.PROTOCOL_TLS_SERVER)
    prefix = f"invalid setting web_config_file ({path}): "
    try:
        ctx.minimum_version = tls.min_version
        ctx.maximum_version = tls.max_version
    except (ValueError, ssl.SSLError) as exc:
        raise WebConfigError(f"{prefix}TLS version: {exc}") from None
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
        elif tls.verify_mode != ssl.CERT_NONE:
            ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)  # as Go: no client CA means the system roots
        where = "tls_server_config.cipher_suites"
        if tls.ciphers is not None:
            ctx.set_ciphers(tls.ciphers)
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
        raise WebConfigError(f"{prefix}{where}: cannot load ({reason})") from None
    ctx.verify_mode = tls.verify_mode
    if tls.prefer_server_ciphers:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.client_allowed_sans = tls.client_allowed_sans
    try:
        if len(tls.curves) == 1:
            ctx.set_ecdh_curve(tls.curves[0])  # with OpenSSL 3, the only group offered for key exchange
        elif tls.curves:
            ctx.set_groups(":".join(tls.curves))  # type: ignore[attr-defined]  # Python >= 3.14 (checked at parse)
    except (ValueError, ssl.SSLError) as exc:
        raise WebConfigError(
            f"{prefix}tls_server_config.curve_preferences: cannot be applied ({exc})"
        ) from None
    return ctx


_SAN_KINDS: Final = frozenset({"DNS", "email", "URI", "IP Address"})


def peer_sans(tls: ssl.SSLObject) -> list[str]:
    """The client certificate's SANs as Go prints them (DNS names, e-mail addresses, IPs, URIs).

    `getpeercert()` decodes the certificate whenever the context asks for one (every client_auth_type but
    NoClientCert), verified or not.
    """
    cert = tls.getpeercert()
    values: list[str] = []
    entries: tuple[tuple[str, str], ...] = (cert or {}).get("subjectAltName", ())  # type: ignore[assignment]
    for kind, value in entries:
        if kind not in _SAN_KINDS:
            continue
        if kind == "IP Address":
            with contextlib.suppress(ValueError):
                value = str(ipaddress.ip_address(value.strip()))  # Go's ip.String() form
        values.append(value)
    return values


# --- the live object the server uses --------------------------------------------------------------------------------


def _fingerprint(paths: Sequence[Path]) -> tuple[tuple[str, int, int, int, int], ...]:
    """What a change to any of `paths` changes: a new file (inode), new content (size, mtime, ctime)."""
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(path), -1, -1, -1, -1))
    return tuple(out)


class WebSecurity:
    """The current web config as the server's Guard and TLS source, re-read when any of its files change.

    A reload builds a complete new SSLContext and swaps one reference; each new connection takes the context current
    when its ClientHello arrives and keeps it to the end, so no handshake ever mixes two configurations.
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
        self._context = build_ssl_context(config.tls, path) if config.tls is not None else None
        self._tls_on = self._context is not None
        self.config = config
        self._auth = BasicAuth(config.users, clock)
        self._limiter = self._make_limiter(config.rate_limit)
        self._checked = clock()
        self.reloads = 0
        self.failed_reloads = 0
        self.rate_limited = 0

    def _make_limiter(self, rate: RateLimit | None) -> TokenBucket | None:
        return None if rate is None else TokenBucket(1.0 / rate.interval, float(rate.burst), self._clock)

    # The Guard protocol ------------------------------------------------------------------------------------------

    def admit(self, path: str, headers: Mapping[str, str], peer: str) -> int | asyncio.Future[int]:
        self.maybe_reload()
        if path in OPEN_PATHS:
            return ALLOWED
        if self._limiter is not None and not self._limiter.allow():
            self.rate_limited += 1
            return TOO_MANY
        return self._auth.check(headers.get("authorization"), peer)

    def challenge(self) -> Sequence[tuple[str, str]]:
        return (("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),)

    def response_headers(self) -> Sequence[tuple[str, str]]:
        return self.config.headers

    # The TlsSource protocol ---------------------------------------------------------------------------------------

    @property
    def ssl_context(self) -> WebSecurity | None:
        """What the HTTP server takes as its TLS source: this object when the file turns TLS on, else None."""
        return self if self._tls_on else None

    def tls_context(self) -> ssl.SSLContext:
        self.maybe_reload()
        assert self._context is not None
        return self._context

    def peer_allowed(self, tls: ssl.SSLObject) -> bool:
        ctx = tls.context
        allowed = ctx.client_allowed_sans if isinstance(ctx, ServerContext) else ()
        if not allowed:
            return True
        sans = peer_sans(tls)
        if any(san in allowed for san in sans):
            return True
        self._log.warning("client_certificate_refused", reason="no allowed SAN", found=sans[:10])
        return False

    @property
    def auth(self) -> BasicAuth:
        return self._auth

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
        except Exception as exc:  # any failure keeps the running config (admit() runs per request)
            self._fingerprint = _fingerprint(self.config.files())
            return self._reload_failed(trigger, _as_web_config_error(self.path, exc))
        self._fingerprint = _fingerprint(config.files())
        try:
            if (config.tls is not None) != self._tls_on:
                raise WebConfigError(
                    f"invalid setting web_config_file ({self.path}): turning TLS on or off needs a restart"
                )
            ctx = build_ssl_context(config.tls, self.path) if config.tls is not None else None
        except Exception as exc:  # as above: a handshake must never meet a half-read file
            return self._reload_failed(trigger, _as_web_config_error(self.path, exc))
        self._context = ctx  # one reference swap: the next handshake gets all of the new section
        if config.users != self.config.users:
            self._auth.close()
            self._auth = BasicAuth(config.users, self._clock)
        if config.rate_limit != self.config.rate_limit:
            self._limiter = self._make_limiter(config.rate_limit)
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
            await asyncio.sleep(interval or WATCH_SECONDS)
            self.maybe_reload()
