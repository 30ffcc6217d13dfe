"""HTTP/1.1 request heads per RFC 9112, strictly: a pure parser, separate from the connection handling.

Anything whose boundaries two parsers could read differently is refused, because a proxy in front of us may be one
of those parsers (request smuggling). We take no request bodies, so a body-announcing field is refused rather than
parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# Field values: visible ASCII, obs-text, SP and HTAB; every other control byte (NUL, CR, LF, DEL, ...) is refused.
_FIELD_VALUE = frozenset(range(0x20, 0x7F)) | frozenset(range(0x80, 0x100)) | {0x09}
_TARGET = frozenset(range(0x21, 0x7F))  # request-target: visible ASCII, no spaces, no controls, no raw UTF-8
# A host in absolute-form: reg-name / IPv4 (unreserved, pct-encoded, sub-delims; no "@": userinfo is refused).
_REG_NAME = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=")
_IP_LITERAL = frozenset(b"0123456789abcdefABCDEF:.vV-._~!$&'()*+,;=")


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    version: str
    headers: Mapping[str, str]  # lower-cased names; repeated fields joined with ", "

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.1":
            return "close" not in connection
        return "keep-alive" in connection


def framing_error(data: bytes | bytearray) -> HTTPStatus | None:
    """A refusal for bytes of a head that no valid request could start with, before the head is complete.

    Looks only at what can be judged early: line endings (a bare CR or LF ends the connection at once, however
    long the rest takes to arrive) and the method token (a TLS ClientHello or binary junk on the plain port is
    answered 400 now instead of after the header timeout).
    """
    if data.count(b"\n") != data.count(b"\r\n"):
        return HTTPStatus.BAD_REQUEST
    crs = data.count(b"\r") - data.count(b"\r\n")
    if crs > 1 or (crs == 1 and not data.endswith(b"\r")):
        return HTTPStatus.BAD_REQUEST
    for byte in data[:32]:
        if byte == 0x20:
            break
        if byte not in _TCHAR:
            return HTTPStatus.BAD_REQUEST
    return None


def parse_head(head: bytes) -> Request | HTTPStatus:
    """A request from its head (without the final CRLF CRLF), or the status to refuse it with.

    Everything RFC 9112 lets a server reject is rejected, since we serve no request that needs any of it: we take no
    request bodies, so any Content-Length other than a single "0" and any Transfer-Encoding is refused rather than
    parsed, and the connection is closed after the answer (the caller closes on every refusal).
    """
    if framing_error(head) is not None:
        return HTTPStatus.BAD_REQUEST
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return HTTPStatus.BAD_REQUEST
    method, target, version = parts
    if not all(b in _TCHAR for b in method) or not all(b in _TARGET for b in target):
        return HTTPStatus.BAD_REQUEST
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if len(version) == 8 and version.startswith(b"HTTP/") and version[5:6].isdigit():
            return HTTPStatus.HTTP_VERSION_NOT_SUPPORTED
        return HTTPStatus.BAD_REQUEST
    origin = origin_form(target, method)
    if origin is None:
        return HTTPStatus.BAD_REQUEST
    headers: dict[str, str] = {}
    counts: dict[str, int] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        # obs-fold (a line starting with SP/HTAB), whitespace before the colon, an empty or non-token name: 400.
        if not sep or not name or not all(b in _TCHAR for b in name):
            return HTTPStatus.BAD_REQUEST
        value = value.strip(b" \t")
        if not all(b in _FIELD_VALUE for b in value):
            return HTTPStatus.BAD_REQUEST
        key = name.decode("ascii").lower()
        text = value.decode("latin-1")
        counts[key] = counts.get(key, 0) + 1
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    if "transfer-encoding" in headers:
        return HTTPStatus.BAD_REQUEST
    if counts.get("content-length", 0) > 1 or headers.get("content-length", "0") != "0":
        return HTTPStatus.BAD_REQUEST
    if version == b"HTTP/1.1" and counts.get("host", 0) != 1:
        return HTTPStatus.BAD_REQUEST  # RFC 9112 §3.2: exactly one Host, or 400
    if counts.get("host", 0) > 1:
        return HTTPStatus.BAD_REQUEST
    return Request(method.decode("ascii"), origin.decode("ascii"), version.decode("ascii"), headers)


def origin_form(target: bytes, method: bytes = b"GET") -> bytes | None:
    """The request-target as origin-form (path and query), or None when it is not a request-target we can serve.

    RFC 9112 §3.2: origin-form ("/metrics?x") as is; absolute-form ("http://host:9100/metrics"), which a server
    MUST accept (§3.2.2; proxies and some clients send it), as its path and query — an empty path is "/", and the
    Host header stays required and checked as for any request; the asterisk-form only for OPTIONS and the
    authority-form only for CONNECT (both answered 405 later). Anything else — another scheme, no authority, user
    information in it, authority-form on another method — is malformed.
    """
    if target.startswith(b"/"):
        return target
    if (target == b"*" and method == b"OPTIONS") or (method == b"CONNECT" and _valid_authority(target)):
        return target  # asterisk-form, authority-form: valid, for methods we answer 405
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if not authority or not _valid_authority(authority):
        return None
    if b"#" in path:
        return None  # a fragment is never part of a request-target
    return path if path.startswith(b"/") else b"/" + path


def _valid_authority(authority: bytes) -> bool:
    """host[:port] (RFC 3986 §3.2, no userinfo): a reg-name or IPv4 address, or an IP literal in brackets."""
    if authority.startswith(b"["):
        end = authority.find(b"]")
        if end < 0 or not all(b in _IP_LITERAL for b in authority[1:end]):
            return False
        host, port = authority[1:end], authority[end + 1 :]
        if port and not port.startswith(b":"):
            return False
        port = port[1:]
    else:
        host, _, port = authority.partition(b":")
        if not host or not all(b in _REG_NAME for b in host):
            return False
    return all(0x30 <= b <= 0x39 for b in port)
