"""What the gateway client can put on the wire, checked once at start: the base URL, header values, basic auth.

Why here and not in the client: a value the client cannot send (a header with a BOM or a non-ASCII character, a
port of 99999) used to pass `--check-config` and then crash-loop the poll task or end `--once` in a traceback. Each
check says what is wrong and where (a character's position), never the value, since the value may be a secret.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .http1client import Origin

# RFC 3986 pchar (unreserved, sub-delims, ':' and '@') and '/', or a %XX escape.
_PATH_RE = re.compile(r"^(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*$")
_URL_RE = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<path>[^?#]*)(?P<query>\?[^#]*)?(?P<fragment>#.*)?$",
    re.DOTALL,
)
_AUTHORITY_RE = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*))(?::(?P<port>[^:]*))?$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
# Headers the HTTP client itself writes from the request (framing, connection management, the target host): one
# set by hand would contradict it, or be dropped.
CLIENT_MANAGED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
     "proxy-connection"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class GatewayUrl:
    """A validated base URL: scheme, host as written (IPv6 without brackets), port, path prefix (no trailing /)."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def origin(self) -> Origin:
        return Origin(self.scheme, self.host, self.port)

    @property
    def text(self) -> str:
        return f"{self.scheme}://{self.origin.authority}{self.path}"

    @property
    def identity(self) -> str:
        """The gateway this URL names, however it is spelled (a host's case, a trailing dot, the default port
        written out): what the state directory keeps to tell another gateway's state from its own."""
        host = self.host.lower().removesuffix(".")
        return f"{self.scheme}://{f'[{host}]' if ':' in host else host}:{self.port}{self.path}"


def parse_gateway_url(value: str) -> GatewayUrl:
    """The gateway's base URL, or ValueError saying which part cannot be used (never repeating the part).

    Accepted: http or https, a host name (ASCII labels; IDN hosts in their xn-- form), an IPv4 address or a
    bracketed IPv6 address, an optional port 1-65535, an optional path prefix (a gateway behind a reverse proxy
    under /bifrost). Refused: credentials (they would be printed by --check-config and logged; use the basic-auth
    settings), a query or fragment (the client builds its own query), whitespace. The client connects to exactly
    the parts returned here (tests/test_settings.py sends a request for any URL that passes).
    """
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must not contain whitespace or control characters")
    match = _URL_RE.match(value)
    if match is None:
        raise ValueError("must be an http:// or https:// URL")
    scheme = match["scheme"].lower()
    if scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if match["query"] is not None or match["fragment"] is not None:
        raise ValueError("must be an http:// or https:// URL without query or fragment")
    authority = match["authority"]
    if "@" in authority:
        raise ValueError("must not contain credentials; use basic_auth_username/basic_auth_password")
    parts = _AUTHORITY_RE.match(authority)
    if parts is None:
        raise ValueError("has a malformed host (an IPv6 address goes in brackets: http://[::1]:8080)")
    host = _check_host(parts["v6"], parts["host"])
    port = _check_port(parts["port"], scheme)
    path = match["path"].rstrip("/")
    if not _PATH_RE.match(path):
        raise ValueError("has a character in its path that must be percent-encoded")
    # A dot segment is sent as given, and a proxy that normalises paths (RFC 3986 remove_dot_segments) routes the
    # request somewhere else than the prefix says: name the prefix as it is meant.
    if any(segment.lower() in (".", "..", "%2e", "%2e%2e", ".%2e", "%2e.") for segment in path.split("/")):
        raise ValueError("has a '.' or '..' segment in its path; write the path prefix without them")
    return GatewayUrl(scheme, host, port, path)


def _check_host(v6: str | None, name: str | None) -> str:
    if v6 is not None:
        if "%" in v6:
            raise ValueError("has an IPv6 zone id, which the HTTP client cannot use")
        try:
            return str(ipaddress.IPv6Address(v6))
        except ValueError:
            raise ValueError("has a malformed IPv6 address") from None
    if not name:
        raise ValueError("has no host")
    if len(name) > 253 or not all(_LABEL_RE.match(label) for label in name.removesuffix(".").split(".")):
        raise ValueError(
            "has a malformed host name (letters, digits, '-' and '_' in dot-separated labels; "
            "an internationalised name in its xn-- form)"
        )
    last = name.removesuffix(".").rsplit(".", 1)[-1]
    if last.isdigit():
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            raise ValueError("has a malformed IPv4 address") from None
    return name


def _check_port(port: str | None, scheme: str) -> int:
    if port is None or port == "":
        if port == "":
            raise ValueError("has an empty port")
        return 80 if scheme == "http" else 443
    if not port.isascii() or not port.isdigit():
        raise ValueError("has a port that is not a number")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError("has a port outside 1-65535")
    return number


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot be sent as an HTTP header value as it is, or None when it can.

    RFC 9110 field values: visible ASCII, with spaces and tabs inside only (a leading or trailing one is stripped
    by every receiver, so the gateway would compare another value); the client sends values as ASCII. A byte-order
    mark gets its own words: it is what an editor on Windows leaves at the start of a file.
    """
    if value.startswith("\ufeff"):
        return "starts with a byte-order mark (U+FEFF); save the file without it"
    for index, char in enumerate(value, 1):
        code = ord(char)
        if code == 0x09 or 0x20 <= code <= 0x7E:
            continue
        if code > 0x7E and code != 0x7F:
            return f"has a non-ASCII character at position {index}, which an HTTP header cannot carry"
        return f"has a control character at position {index}"
    if value != value.strip(" \t"):
        return "starts or ends with a space or tab, which HTTP strips"
    return None


def basic_auth_problem(value: str, *, username: bool) -> str | None:
    """Why `value` cannot be a basic-auth user name or password, or None.

    Both travel base64-encoded as UTF-8, so any printable text can be sent; control and format characters
    (a byte-order mark, a zero-width space) are refused as the typo they always are, and a user name cannot hold
    ':' (RFC 7617: the first ':' ends it).
    """
    if value.startswith("\ufeff"):
        return "starts with a byte-order mark (U+FEFF); save the file without it"
    for index, char in enumerate(value, 1):
        if not (char.isprintable() or char == " "):
            return f"has a control or invisible character at position {index}"
    if username and ":" in value:
        return "contains ':', which cannot be part of a basic-auth user name"
    return None
