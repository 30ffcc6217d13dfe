"""Web config conformance: the config shapes and expected outcomes of prometheus/exporter-toolkit's own tests.

Every row mirrors one case of the toolkit's web/tls_config_test.go and web/handler_test.go (at commit 19a7c2d):
the same kind of file, the same kind of client, the same outcome (refused at start, served, 401, 429, handshake
refused, "HTTP response to HTTPS client"...). The configs and certificates are our own, made here (RSA, like the
toolkit's, so its ECDHE-RSA cipher cases apply); the basic-auth users have the toolkit's bcrypt costs (12, 18, 10,
10), and every request has the 15 s client timeout a scrape could have (Prometheus' default is 10 s): one slow
hash must not make every login slow. A row the toolkit has and we cannot share is marked not applicable with the reason; the summary line
`conformance: N agree, M disagree, D documented deviations, K not applicable` is printed at the end of the module.
A deviation row asserts our documented outcome (docs/security.md says why it differs). Rows of our own
(`ours=True`) cover what the toolkit's tests do not reach and are not in that count.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import os
import socket
import ssl
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from exporter.basicauth import dummy_hash
from exporter.webconfig import WebConfigError, WebSecurity
from tests.test_http_framing import ServerThread, statuses

HELLO = b"Hello World!"
CLIENT_TIMEOUT = 15.0


# --- certificates ----------------------------------------------------------------------------------------------


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: rsa.RSAPrivateKey,
    **kw: Any,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if kw.get("ca"):
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if kw.get("sans"):
        builder = builder.add_extension(x509.SubjectAlternativeName(kw["sans"]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Certs:
    """A CA-signed server certificate, two self-signed client certificates (the second with DNS SANs)."""

    dir: Path
    ca: Path = field(init=False)
    server_crt: Path = field(init=False)
    server_key: Path = field(init=False)
    client: tuple[Path, Path] = field(init=False)
    client2: tuple[Path, Path] = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        ca_key = _key()
        ca = _cert("conformance CA", ca_key, None, ca_key, ca=True)
        self.ca = self._write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))
        server_key = _key()
        server = _cert(
            "localhost",
            server_key,
            ca,
            ca_key,
            sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )
        self.server_crt = self._write("server.crt", server.public_bytes(serialization.Encoding.PEM))
        self.server_key = self._write("server.key", _pem_key(server_key))
        self.client = self._self_signed("client_selfsigned", [x509.DNSName("client")])
        self.client2 = self._self_signed("client2_selfsigned", [x509.DNSName("test1"), x509.DNSName("test3")])

    def _self_signed(self, stem: str, sans: list[x509.GeneralName]) -> tuple[Path, Path]:
        key = _key()
        cert = _cert(stem, key, None, key, ca=True, sans=sans)
        return (
            self._write(f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM)),
            self._write(f"{stem}.key", _pem_key(key)),
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("conformance"))


_HASHES: dict[tuple[str, int], str] = {}


def _hash(password: str, cost: int) -> str:
    if (password, cost) not in _HASHES:
        _HASHES[(password, cost)] = bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()
    return _HASHES[(password, cost)]


# bob's hash: a well-formed cost-18 bcrypt hash that no password matches (made without hashing: computing a real
# one takes ~16 s). No case logs in as bob; what matters is that a cost-18 user exists, as in the toolkit's file.
_BOB = dummy_hash(18).decode()


def users() -> dict[str, str]:
    """The toolkit's users file: alice at cost 12, bob at 18, carol and dave at 10 (the same costs, our hashes)."""
    return {
        "alice": _hash("alice123", 12),
        "bob": _BOB,
        "carol": _hash("carol123", 10),
        "dave": _hash("dave123", 10),
    }


# --- clients -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    tls: bool = False
    cert: str | None = None  # "client" or "client2"
    max_version: ssl.TLSVersion | None = None
    ciphers: str | None = None  # OpenSSL names, client order
    curve: str | None = None  # the one group the client offers
    user: str | None = None
    password: str | None = None


@dataclass
class Outcome:
    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    cipher: str | None = None
    error: str | None = None  # a TLS or connection refusal
    http_response_to_https: bool = False


def request(port: int, certs: Certs, client: Client) -> Outcome:
    head = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    if client.user is not None:
        token = base64.b64encode(f"{client.user}:{client.password}".encode()).decode()
        head += f"Authorization: Basic {token}\r\n"
    raw = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    try:
        if not client.tls:
            raw.sendall((head + "\r\n").encode())
            return _parse(_read_all(raw))
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        if client.cert is not None:
            pair = certs.client if client.cert == "client" else certs.client2
            ctx.load_cert_chain(str(pair[0]), str(pair[1]))
        if client.max_version is not None:
            if client.max_version < ssl.TLSVersion.TLSv1_2:
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # so this client can offer TLS 1.1 at all
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is the point of this client
                ctx.maximum_version = client.max_version
        if client.ciphers is not None:
            ctx.set_ciphers(client.ciphers)
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # Go's client CipherSuites apply to TLS 1.2 too
        if client.curve is not None:
            ctx.set_ecdh_curve(client.curve)
        try:
            tls = ctx.wrap_socket(raw, server_hostname="localhost")
        except ssl.SSLError as exc:
            return _refused_handshake(raw, exc)
        except OSError as exc:
            return Outcome(error=type(exc).__name__)
        try:
            cipher = tls.cipher()
            tls.sendall((head + "\r\n").encode())
            outcome = _parse(_read_all(tls))
            outcome.cipher = cipher[0] if cipher else None
            return outcome
        except (ssl.SSLError, OSError) as exc:
            return Outcome(error=str(exc) or type(exc).__name__)
        finally:
            tls.close()
    finally:
        raw.close()


def _refused_handshake(raw: socket.socket, exc: ssl.SSLError) -> Outcome:
    if "WRONG_VERSION_NUMBER" in str(exc) or "record layer failure" in str(exc):
        return Outcome(error=str(exc), http_response_to_https=True)
    return Outcome(error=str(exc))


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLError, ConnectionResetError) as exc:
            if data:
                return data
            raise ssl.SSLError(str(exc)) from None
        if not chunk:
            return data
        data += chunk


def _parse(data: bytes) -> Outcome:
    if not data:
        return Outcome(error="connection closed without a response")
    head, _, body = data.partition(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        fields[name.strip().lower()] = value.strip()
    return Outcome(status=statuses(data)[0], body=body, headers=fields)


def https_to_plain_port(port: int) -> bytes:
    """What a plain port answers to a TLS ClientHello (Go clients then say "server gave HTTP response to HTTPS
    client"; the bytes are the same question for any client)."""
    hello = bytes.fromhex("16030100f8010000f40303") + os.urandom(32) + bytes(64)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(hello)
        return _read_all(sock)


# --- the table -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    config: Callable[[Certs], Any] | None  # the YAML document; None = no web config file at all
    client: Client = Client()
    requests: int = 1
    expect: str = "ok"  # ok | start_error | status | tls_refused | http_to_https | https_to_http
    detail: Any = None  # start_error: substring; status: the status; ok: expected cipher or headers
    not_applicable: str | None = None
    ours: bool = False  # a row of our own, beyond the toolkit's cases (not in the conformance count)
    # A documented deviation (docs/security.md): the row asserts our outcome, which differs from the toolkit's.
    deviation: str | None = None


def tls(c: Certs, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"cert_file": str(c.server_crt), "key_file": str(c.server_key)}
    section.update(extra)
    return {"tls_server_config": section}


def no_auth_good(c: Certs, **extra: Any) -> dict[str, Any]:
    return tls(c, client_auth_type="VerifyClientCertIfGiven", **extra)


def no_allowed_san(c: Certs) -> dict[str, Any]:
    return tls(
        c,
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file=str(c.client2[0]),
        client_allowed_sans=["bad"],
    )


SET_GROUPS = hasattr(ssl.SSLContext, "set_groups")
UNVERIFIED = (
    "client certificates accepted unverified: Python's ssl cannot ask for one without verifying it, and an unverified "
    "certificate authenticates nothing; refused at start, naming client_auth_type"
)


ALL_CIPHERS = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
]
SOME_CIPHERS = ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]
HEADERS = {
    "X-Frame-Options": "deny",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-XSS-Protection": 1,  # a YAML number, as in the toolkit's file
    "Content-Security-Policy": "default-src 'self' *.test.example.net",
}
TLS_CLIENT = Client(tls=True)

CASES: list[Case] = [
    # TestYAMLFiles: run and validate (our validate is the same load: --check-config builds a WebSecurity too)
    Case(
        "yaml: path to config yml invalid",
        lambda c: "MISSING",
        expect="start_error",
        detail="web_config_file",
    ),
    Case("yaml: empty config yml", lambda c: ""),
    Case("yaml: invalid structure", lambda c: "hWkNKCp3fvIx3jKnsaBI", expect="start_error", detail="mapping"),
    Case(
        "yaml: invalid key",
        lambda c: {"tls_server_config": {"cert_filse": str(c.server_crt)}},
        expect="start_error",
        detail="unknown key",
    ),
    Case(
        "yaml: cert path empty",
        lambda c: {"tls_server_config": {"cert_file": "", "key_file": str(c.server_key)}},
        expect="start_error",
        detail="missing one of cert or cert_file",
    ),
    Case(
        "yaml: cert empty",
        lambda c: {"tls_server_config": {"cert": "", "key_file": str(c.server_key)}},
        expect="start_error",
        detail="missing one of cert or cert_file",
    ),
    Case(
        "yaml: key path empty",
        lambda c: {"tls_server_config": {"cert_file": str(c.server_crt), "key_file": ""}},
        expect="start_error",
        detail="missing one of key or key_file",
    ),
    Case(
        "yaml: key empty",
        lambda c: {"tls_server_config": {"cert_file": str(c.server_crt), "key": ""}},
        expect="start_error",
        detail="missing one of key or key_file",
    ),
    Case(
        "yaml: cert path and key path empty",
        lambda c: {"tls_server_config": {"cert_file": "", "key_file": "", "client_auth_type": "x"}},
        expect="start_error",
        detail="missing one of cert or cert_file",
    ),
    Case(
        "yaml: cert path invalid",
        lambda c: {"tls_server_config": {"cert_file": "somefile", "key_file": str(c.server_key)}},
        expect="start_error",
        detail="does not exist",
    ),
    Case(
        "yaml: key path invalid",
        lambda c: {"tls_server_config": {"cert_file": str(c.server_crt), "key_file": "somefile"}},
        expect="start_error",
        detail="does not exist",
    ),
    Case(
        "yaml: cert path and key path invalid",
        lambda c: {"tls_server_config": {"cert_file": "somefile", "key_file": "somefile"}},
        expect="start_error",
        detail="does not exist",
    ),
    Case(
        "yaml: client CA without a client auth policy",
        lambda c: tls(c, client_ca_file=str(c.ca)),
        expect="start_error",
        detail="client CA's have been configured without a Client Auth Policy",
    ),
    Case(
        "yaml: client CA file invalid",
        lambda c: tls(c, client_ca_file="somefile"),
        expect="start_error",
        detail="does not exist",
    ),
    Case(
        "yaml: invalid user list",
        lambda c: {**tls(c), "basic_auth_users": {"john": "doe"}},
        expect="start_error",
        detail="is not a bcrypt hash",
    ),
    Case(
        "yaml: bad cipher",
        lambda c: no_auth_good(c, cipher_suites=["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048"]),
        expect="start_error",
        detail="unknown cipher",
    ),
    Case(
        "yaml: bad curves",
        lambda c: no_auth_good(c, curve_preferences=["CurveP257"]),
        expect="start_error",
        detail="unknown curve",
    ),
    Case(
        "yaml: bad TLS version",
        lambda c: no_auth_good(c, min_version="TLS111"),
        expect="start_error",
        detail="unknown TLS version",
    ),
    # TestServerBehaviour
    Case("server: no config, default client", None),
    Case("server: no config, TLS client", None, TLS_CLIENT, expect="https_to_http"),
    Case("server: TLS config, default client", no_auth_good, expect="http_to_https"),
    Case("server: TLS config, TLS client", no_auth_good, TLS_CLIENT),
    Case(
        "server: inline cert and key, TLS client",
        lambda c: {
            "tls_server_config": {
                "cert": c.server_crt.read_text(),
                "key": c.server_key.read_text(),
                "client_auth_type": "VerifyClientCertIfGiven",
            }
        },
        TLS_CLIENT,
    ),
    Case(
        "server: TLS 1.1 client",
        no_auth_good,
        Client(tls=True, max_version=ssl.TLSVersion.TLSv1_1),
        expect="tls_refused",
        detail="PROTOCOL_VERSION",  # the server's alert, as Go sends
    ),
    Case("server: all ciphers", lambda c: no_auth_good(c, cipher_suites=ALL_CIPHERS), TLS_CLIENT),
    Case(
        "server: some ciphers",
        lambda c: no_auth_good(c, cipher_suites=SOME_CIPHERS, min_version="TLS12", max_version="TLS12"),
        Client(tls=True, ciphers="ECDHE-RSA-AES128-GCM-SHA256"),
    ),
    Case(
        "server: no common cipher",
        lambda c: no_auth_good(c, cipher_suites=SOME_CIPHERS, min_version="TLS12", max_version="TLS12"),
        Client(tls=True, ciphers="ECDHE-RSA-AES256-SHA"),
        expect="tls_refused",
        detail="HANDSHAKE_FAILURE",
    ),
    Case(
        "server: multiple client ciphers, server order",
        lambda c: no_auth_good(c, cipher_suites=SOME_CIPHERS, min_version="TLS12", max_version="TLS12"),
        Client(tls=True, ciphers="ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"),
        detail="ECDHE-RSA-AES128-GCM-SHA256",
    ),
    Case(
        "server: multiple client ciphers, client chooses",
        lambda c: no_auth_good(
            c,
            cipher_suites=list(reversed(SOME_CIPHERS)),
            prefer_server_cipher_suites=False,
            min_version="TLS12",
            max_version="TLS12",
        ),
        Client(tls=True, ciphers="ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"),
        detail="ECDHE-RSA-AES128-GCM-SHA256",
    ),
    Case(
        "server: all curves",
        lambda c: no_auth_good(c, curve_preferences=["CurveP256", "CurveP384", "CurveP521", "X25519"]),
        TLS_CLIENT,
    )
    if SET_GROUPS
    else Case(
        "server: all curves",
        lambda c: no_auth_good(c, curve_preferences=["CurveP256", "CurveP384", "CurveP521", "X25519"]),
        expect="start_error",
        detail="curve_preferences: lists 4 curves",
        deviation="a list of curves needs Python 3.14's SSLContext.set_groups; before it, one curve or none",
    ),
    Case(
        "server: some curves",
        lambda c: no_auth_good(c, min_version="TLS13", curve_preferences=["CurveP521"]),
        Client(tls=True, curve="secp521r1"),
    ),
    Case(
        "server: no common curve",
        lambda c: no_auth_good(c, min_version="TLS13", curve_preferences=["CurveP521"]),
        Client(tls=True, curve="secp384r1"),
        expect="tls_refused",
        detail="HANDSHAKE_FAILURE",
    ),
    Case(
        "server: non-HTTP/2 ciphers with http2 off",
        lambda c: {
            **no_auth_good(c, cipher_suites=["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"], max_version="TLS12"),
            "http_server_config": {"http2": False},
        },
        TLS_CLIENT,
    ),
    Case(
        "server: non-HTTP/2 ciphers with http2 on",
        lambda c: no_auth_good(
            c, cipher_suites=["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"], max_version="TLS12"
        ),
        TLS_CLIENT,
        not_applicable="Go's HTTP/2 refuses a cipher list without AES-128-GCM; we speak HTTP/1.1 only, so it serves",
    ),
    Case("server: valid headers", lambda c: {"http_server_config": {"headers": HEADERS}}, detail=HEADERS),
    Case(
        "server: invalid X-Content-Type-Options",
        lambda c: {"http_server_config": {"headers": {"X-Content-Type-Options": "sniff"}}},
        expect="start_error",
        detail="X-Content-Type-Options: value must be one of",
    ),
    Case(
        "server: invalid X-Frame-Options",
        lambda c: {"http_server_config": {"headers": {"X-Frame-Options": "foo"}}},
        expect="start_error",
        detail="X-Frame-Options: value must be one of",
    ),
    Case(
        "server: header that cannot be set",
        lambda c: {"http_server_config": {"headers": {"Content-Type": "foo"}}},
        expect="start_error",
        detail="header cannot be configured",
    ),
    Case(
        "server: RequireAnyClientCert, certificate presented",
        lambda c: tls(c, client_auth_type="RequireAnyClientCert"),
        Client(tls=True, cert="client"),
        expect="start_error",
        detail="tls_server_config.client_auth_type: RequireAnyClientCert is not supported",
        deviation=UNVERIFIED,
    ),
    Case(
        "server: RequireAnyClientCert, inline key, certificate presented",
        lambda c: {
            "tls_server_config": {
                "cert_file": str(c.server_crt),
                "key": c.server_key.read_text(),
                "client_auth_type": "RequireAnyClientCert",
            }
        },
        Client(tls=True, cert="client"),
        expect="start_error",
        detail="tls_server_config.client_auth_type: RequireAnyClientCert is not supported",
        deviation=UNVERIFIED,
    ),
    Case(
        "server: RequireClientCert (the old spelling)",
        lambda c: tls(c, client_auth_type="RequireClientCert", client_allowed_sans=["test3"]),
        Client(tls=True, cert="client2"),
        expect="start_error",
        detail="tls_server_config.client_auth_type: RequireClientCert is not supported",
        ours=True,
    ),
    Case(
        "server: RequireAndVerifyClientCert, certificate from another CA",
        lambda c: tls(c, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(c.client[0])),
        Client(tls=True, cert="client2"),
        expect="tls_refused",
        detail="UNKNOWN_CA",
        ours=True,
    ),
    Case(
        "server: RequestClientCert, certificate presented",
        lambda c: tls(c, client_auth_type="RequestClientCert"),
        Client(tls=True, cert="client"),
        expect="start_error",
        detail="tls_server_config.client_auth_type: RequestClientCert is not supported",
        ours=True,
    ),
    Case(
        "server: RequireAndVerifyClientCert, certificate presented",
        lambda c: tls(c, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(c.client[0])),
        Client(tls=True, cert="client"),
    ),
    Case(
        "server: allowed SAN present",
        lambda c: tls(
            c,
            client_auth_type="RequireAndVerifyClientCert",
            client_ca_file=str(c.client2[0]),
            client_allowed_sans=["one", "test3", "two"],
        ),
        Client(tls=True, cert="client2"),
    ),
    Case(
        "server: no allowed SAN",  # Go's client, as the toolkit's test, negotiates TLS 1.3
        no_allowed_san,
        Client(tls=True, cert="client2"),
        expect="status",
        detail=403,
        deviation="TLS 1.3: refused with 403 after the handshake, not a bad_certificate alert inside it (Python's "
        "ssl has no hook there and cannot send an encrypted alert of its own)",
    ),
    Case(
        "server: no allowed SAN, TLS 1.2",
        no_allowed_san,
        Client(tls=True, cert="client2", max_version=ssl.TLSVersion.TLSv1_2),
        expect="tls_refused",
        detail="BAD_CERTIFICATE",  # the alert Go sends, in the handshake
        ours=True,
    ),
    Case(
        "server: rate limit off (interval 0)",
        lambda c: {"rate_limit": {"interval": 0, "burst": 0}},
        requests=11,
    ),
    Case(
        "server: rate limit, 1s and burst 0",
        lambda c: {"rate_limit": {"interval": "1s", "burst": 0}},
        requests=11,
        expect="status",
        detail=429,
    ),
    # TestUsers
    Case(
        "users: no TLS, no credentials", lambda c: {"basic_auth_users": users()}, expect="status", detail=401
    ),
    Case(
        "users: no TLS, right credentials",
        lambda c: {"basic_auth_users": users()},
        Client(user="dave", password="dave123"),
    ),
    Case(
        "users: TLS, no credentials",
        lambda c: {**tls(c), "basic_auth_users": users()},
        TLS_CLIENT,
        expect="status",
        detail=401,
    ),
    Case(
        "users: TLS, right credentials",
        lambda c: {**tls(c), "basic_auth_users": users()},
        Client(tls=True, user="dave", password="dave123"),
    ),
    Case(
        "users: TLS, another user's right credentials",
        lambda c: {**tls(c), "basic_auth_users": users()},
        Client(tls=True, user="carol", password="carol123"),
    ),
    Case(
        "users: TLS, wrong password",
        lambda c: {**tls(c), "basic_auth_users": users()},
        Client(tls=True, user="dave", password="bad"),
        expect="status",
        detail=401,
    ),
    Case(
        "users: TLS, unknown user",
        lambda c: {**tls(c), "basic_auth_users": users()},
        Client(tls=True, user="nonexistent", password="nonexistent"),
        expect="status",
        detail=401,
    ),
    # TestTLSConfigIsEnabled: on = TLS is set up (so a missing certificate is an error), off = plain HTTP
    Case("is enabled: empty", lambda c: {"tls_server_config": {}}),
    Case(
        "is enabled: only non-enabling fields",
        lambda c: {"tls_server_config": {"min_version": "TLS12", "prefer_server_cipher_suites": True}},
    ),
    Case("is enabled: cert_file and key_file", tls, TLS_CLIENT),
    Case(
        "is enabled: inline cert and key",
        lambda c: {"tls_server_config": {"cert": c.server_crt.read_text(), "key": c.server_key.read_text()}},
        TLS_CLIENT,
    ),
    Case(
        "is enabled: only client CA file",
        lambda c: {"tls_server_config": {"client_ca_file": str(c.ca)}},
        expect="start_error",
        detail="missing one of cert or cert_file",
    ),
    Case(
        "is enabled: only client auth type",
        lambda c: {"tls_server_config": {"client_auth_type": "RequireAndVerifyClientCert"}},
        expect="start_error",
        detail="missing one of cert or cert_file",
    ),
    # handler_test.go
    Case(
        "handler: basic auth without TLS, fake user",
        lambda c: {"basic_auth_users": users()},
        Client(user="fakeuser", password="fakepassword"),
        requests=2,
        expect="status",
        detail=401,
    ),
    Case(
        "handler: user name carrying a hash",
        lambda c: {"basic_auth_users": users()},
        Client(user="alice" + users()["alice"], password="fakepassword"),
        expect="status",
        detail=401,
    ),
    Case(
        "handler: password carrying a hash",
        lambda c: {"basic_auth_users": users()},
        Client(user="alice", password=users()["carol"] + "fakepassword"),
        expect="status",
        detail=401,
    ),
    Case("handler: headers", lambda c: {"http_server_config": {"headers": HEADERS}}, detail=HEADERS),
]


def _write(tmp: Path, doc: Any) -> Path:
    path = tmp / "web.yml"
    if doc == "MISSING":
        return tmp / "does-not-exist.yml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


@contextlib.contextmanager
def served(doc: Any, tmp: Path, **options: Any) -> Iterator[tuple[int, WebSecurity | None]]:
    if doc is None:
        with ServerThread(HELLO) as srv:
            yield srv.port, None
        return
    web = WebSecurity(_write(tmp, doc), **options)
    with ServerThread(HELLO, guard=web, tls=web.ssl_context) as srv:
        yield srv.port, web


RESULTS: dict[str, str] = {}
KINDS = ("agree", "deviation", "n/a")


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    yield
    toolkit = {c.name for c in CASES if not c.ours} | {"reload"}
    counted = {kind: sum(1 for n, r in RESULTS.items() if r == kind and n in toolkit) for kind in KINDS}
    total = len(toolkit)
    print(
        f"\nconformance: {counted['agree']} agree, {total - sum(counted.values())} disagree, "
        f"{counted['deviation']} documented deviations, {counted['n/a']} not applicable (of {total})"
    )


def _agreement(case: Case) -> str:
    return "agree" if case.deviation is None else "deviation"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conformance(case: Case, certs: Certs, tmp_path: Path) -> None:
    if case.not_applicable is not None:
        RESULTS[case.name] = "n/a"
        pytest.skip(case.not_applicable)
    doc = case.config(certs) if case.config is not None else None
    if case.expect == "start_error":
        with pytest.raises(WebConfigError) as info:
            WebSecurity(_write(tmp_path, doc))
        assert case.detail in str(info.value)
        RESULTS[case.name] = _agreement(case)
        return
    with served(doc, tmp_path) as (port, _):
        if case.expect == "https_to_http":
            assert statuses(https_to_plain_port(port)) == [400]  # at once, not after a timeout
            outcome = request(port, certs, case.client)
            assert outcome.error is not None and outcome.http_response_to_https, outcome
            RESULTS[case.name] = _agreement(case)
            return
        outcomes = [request(port, certs, case.client) for _ in range(case.requests)]
    if case.expect == "ok":
        for outcome in outcomes:
            assert outcome.status == 200 and outcome.body == HELLO, outcome
            if isinstance(case.detail, str):
                assert outcome.cipher == case.detail
            if isinstance(case.detail, dict):
                for name, value in case.detail.items():
                    assert outcome.headers.get(name.lower()) == str(value), name
    elif case.expect == "status":
        assert any(o.status == case.detail for o in outcomes), outcomes
        assert all(o.status in (200, case.detail) for o in outcomes), outcomes
    elif case.expect == "tls_refused":
        assert all(o.status is None and o.error for o in outcomes), outcomes
        if case.detail is not None:
            assert all(case.detail in (o.error or "") for o in outcomes), outcomes
    elif case.expect == "http_to_https":
        for outcome in outcomes:
            assert outcome.status == 400 and b"HTTP request to an HTTPS server" in outcome.body, outcome
    else:
        raise AssertionError(f"unknown expectation {case.expect}")
    RESULTS[case.name] = _agreement(case)


def test_conformance_config_reloading(certs: Certs, tmp_path: Path) -> None:
    """TestConfigReloading: a blocking config (client certificates required, verified against the system roots)
    refuses a client without one; after the file is swapped for a permissive one, the next connection is served."""
    blocking = tls(certs, client_auth_type="RequireAndVerifyClientCert")
    with served(blocking, tmp_path, check_interval=0.0) as (port, web):
        assert request(port, certs, TLS_CLIENT).error is not None
        _write(tmp_path, no_auth_good(certs))
        outcome = request(port, certs, TLS_CLIENT)
        assert outcome.status == 200 and outcome.body == HELLO, outcome
        assert web is not None and web.reloads == 1
    RESULTS["reload"] = "agree"
