"""Our own HTTP server behind an exporter-toolkit web config: parsing, TLS, mTLS, basic auth, rotation, Prometheus.

Every certificate is generated here with `cryptography` (EC P-256, so it is fast) and every connection is real TLS
on loopback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import bcrypt
import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exporter import cli
from exporter.simulator import ProviderSpec, Simulator
from exporter.webconfig import (
    REALM,
    BasicAuth,
    WebConfigError,
    WebSecurity,
    load_web_config,
    parse_basic,
    parse_web_config,
)
from tests.conftest import free_port, require_tool
from tests.harness import ExporterThread, make_settings, wait_until
from tests.test_http_framing import ServerThread

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-scrape-pw"
T = TypeVar("T")


# --- certificates ----------------------------------------------------------------------------------------------


class Pki:
    """A CA that issues server and client certificates into a directory."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = self.dir / f"{name}-ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, *, client: bool = False) -> tuple[Path, Path, int]:
        """(cert_file, key_file, serial) of a fresh leaf; server leaves are valid for 127.0.0.1 and localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        if not client:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_file, key_file = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        write_pair(cert_file, key_file, cert, key)
        return cert_file, key_file, serial


def write_pair(
    cert_file: Path, key_file: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def bcrypt_hash(password: str, rounds: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def client_context(ca_file: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def peer_serial(port: int, ca_file: Path) -> int:
    """Serial of the certificate the server presents to a brand-new connection."""
    import socket

    ctx = client_context(ca_file)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def quietly(probe: Callable[[], T]) -> T | None:
    """`probe()`, or None while it fails (a server that still presents the old certificate, say)."""
    try:
        return probe()
    except (OSError, httpx.HTTPError):
        return None


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    sim = Simulator(providers=[ProviderSpec("openai")], initial_batches=5, latency_ms=5)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki", "one")


BODY = b"# HELP bifrost_batch_exporter_build_info x\nbifrost_batch_exporter_build_info 1\n"


def serve(web: WebSecurity) -> ServerThread:
    """Our HTTP server behind `web`, serving fixed bytes (the HTTP and TLS layers are what these tests are about)."""
    return ServerThread(BODY, guard=web, tls=web.ssl_context)


def serve_exporter(sim: Simulator, web: WebSecurity) -> ExporterThread:
    settings = make_settings(sim.url, ["openai"])
    return ExporterThread(settings, auto_poll=True, guard=web, ssl_context=web.ssl_context)


# --- parsing -----------------------------------------------------------------------------------------------------


def test_full_toolkit_example_parses(tmp_path: Path, pki: Pki) -> None:
    cert, key, _ = pki.issue("server")
    path = write_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": {
                "cert_file": cert.name,  # relative to the web-config file, like the toolkit
                "key_file": str(key),
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_ca_file": str(pki.ca_file),
                "min_version": "TLS12",
                "max_version": "TLS13",
                "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"],
                "prefer_server_cipher_suites": True,
                "curve_preferences": ["X25519"],
            },
            "http_server_config": {"http2": True, "headers": {"X-Frame-Options": "deny"}},
            "basic_auth_users": {"prometheus": bcrypt_hash(PASSWORD), 1000: bcrypt_hash("x")},
        },
    )
    (tmp_path / cert.name).write_bytes(cert.read_bytes())
    config = load_web_config(path)
    assert config.tls is not None
    assert config.tls.verify_mode == ssl.CERT_REQUIRED
    assert config.tls.cert_file == tmp_path / cert.name
    assert config.tls.ciphers == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert set(config.users) == {"prometheus", "1000"}
    assert config.headers == (("X-Frame-Options", "deny"),)
    assert config.tls.curves == ("X25519",)
    WebSecurity(path)  # the contexts build


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"tls_server_config": {"cert_fil": "x"}}, "unknown key 'tls_server_config.cert_fil'"),
        ({"basic_auth_user": {}}, "unknown key 'basic_auth_user'"),
        ({"http_server_config": {"header": {}}}, "unknown key 'http_server_config.header'"),
        ({"rate_limit": {"every": "1s"}}, "unknown key 'rate_limit.every'"),
        (
            {"basic_auth_users": {"alice": "plaintext-password"}},
            "basic_auth_users.alice: is not a bcrypt hash",
        ),
        ({"basic_auth_users": {"alice": "$2b$10$tooshort"}}, "basic_auth_users.alice: is not a bcrypt hash"),
        ({"basic_auth_users": {"a:b": "$2b$04$" + "a" * 53}}, "contain no ':'"),
        ({"basic_auth_users": ["alice"]}, "basic_auth_users: must be a mapping"),
        ({"http_server_config": {"headers": {"Set-Cookie": "x"}}}, "header cannot be configured"),
        (
            {"http_server_config": {"headers": {"X-Frame-Options": "allow"}}},
            "must be one of deny, sameorigin",
        ),
        ({"http_server_config": {"headers": {"X-XSS-Protection": "1\r\nX: y"}}}, "control character"),
        ({"tls_server_config": {"client_auth_type": "Whatever"}}, "invalid ClientAuth: 'Whatever'"),
        ({"tls_server_config": {"min_version": "TLS14"}}, "unknown TLS version: 'TLS14'"),
        ({"tls_server_config": {"cert_file": "/nonexistent.pem"}}, "does not exist"),
        ({"tls_server_config": {"client_auth_type": "RequireAndVerifyClientCert"}}, "missing one of cert"),
        (
            {"tls_server_config": {"cert": "x", "key": "y", "client_allowed_sans": ["a"]}},
            "client_allowed_sans: needs a client_auth_type",
        ),
        ({"tls_server_config": {"cipher_suites": ["TLS_RSA_WITH_RC4_128_SHA"]}}, "unknown cipher"),
        ({"tls_server_config": {"curve_preferences": ["CurveP257"]}}, "unknown curve: 'CurveP257'"),
        # Documented deviations from exporter-toolkit (docs/security.md): refused, never served weaker.
        (
            {"tls_server_config": {"client_auth_type": "RequireAnyClientCert"}},
            "tls_server_config.client_auth_type: RequireAnyClientCert is not supported",
        ),
        (
            {"tls_server_config": {"client_auth_type": "RequestClientCert"}},
            "tls_server_config.client_auth_type: RequestClientCert is not supported",
        ),
        (
            {"tls_server_config": {"client_auth_type": "RequireClientCert"}},
            "tls_server_config.client_auth_type: RequireClientCert is not supported",
        ),
        pytest.param(
            {"tls_server_config": {"curve_preferences": ["CurveP256", "CurveP384"]}},
            "tls_server_config.curve_preferences: lists 2 curves",
            marks=pytest.mark.skipif(
                hasattr(ssl.SSLContext, "set_groups"), reason="Python >= 3.14 applies a list of curves"
            ),
        ),
        ({"rate_limit": {"interval": "soon"}}, "rate_limit.interval: must be a duration"),
        ({"rate_limit": {"interval": "1s", "burst": -1}}, "rate_limit.burst: must be a whole number"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_config_fails_naming_the_key(tmp_path: Path, doc: Any, expected: str) -> None:
    with pytest.raises(WebConfigError) as info:
        parse_web_config(doc, tmp_path / "web.yml")
    message = str(info.value)
    assert expected in message
    assert message.startswith("invalid setting web_config_file (")
    assert "plaintext-password" not in message


def test_min_above_max_and_missing_key(tmp_path: Path, pki: Pki) -> None:
    cert, _, _ = pki.issue("server")
    doc = {"tls_server_config": {"cert_file": str(cert), "min_version": "TLS13", "max_version": "TLS12"}}
    with pytest.raises(WebConfigError) as info:
        parse_web_config(doc, tmp_path / "web.yml")
    assert "min_version: is above max_version" in str(info.value)
    assert "key_file: missing" in str(info.value)


def test_key_not_matching_certificate_fails_at_start(tmp_path: Path, pki: Pki) -> None:
    cert, _, _ = pki.issue("server")
    _, other_key, _ = pki.issue("other")
    path = write_config(
        tmp_path / "web.yml", {"tls_server_config": {"cert_file": str(cert), "key_file": str(other_key)}}
    )
    with pytest.raises(WebConfigError, match=r"cert_file/key_file: cannot load"):
        WebSecurity(path)


def test_empty_file_and_empty_tls_section_mean_plain_http(tmp_path: Path) -> None:
    (tmp_path / "empty.yml").write_text("")
    assert load_web_config(tmp_path / "empty.yml").tls is None
    path = write_config(tmp_path / "web.yml", {"tls_server_config": {}, "basic_auth_users": None})
    web = WebSecurity(path)
    assert web.ssl_context is None
    assert web.admit("/metrics", {}, "127.0.0.1") == 0


def test_inline_cert_and_key(tmp_path: Path, pki: Pki) -> None:
    cert, key, _ = pki.issue("server")
    path = write_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": {
                "cert": cert.read_text(),
                "key": key.read_text(),
                "client_ca": pki.ca_file.read_text(),
                "client_auth_type": "RequireAndVerifyClientCert",
            }
        },
    )
    assert WebSecurity(path).ssl_context is not None


def test_cli_exits_2_on_bad_web_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path / "web.yml", {"basic_auth_users": {"alice": "hunter2hunter2"}, "tls": {}})
    monkeypatch.setenv("BIFROST_EXPORTER_WEB_CONFIG_FILE", str(path))
    assert cli.main(["--check-config"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'tls'" in err
    assert "basic_auth_users.alice: is not a bcrypt hash" in err
    assert "hunter2hunter2" not in err
    assert cli.main(["--once"]) == 2  # the same check runs before anything else


# --- basic auth ----------------------------------------------------------------------------------------------------


def test_parse_basic_rejects_garbage() -> None:
    assert parse_basic("Basic " + "YWxpY2U6cHc=") == (b"alice", b"pw")
    assert parse_basic("basic YWxpY2U6") == (b"alice", b"")
    for bad in (None, "", "Bearer x", "Basic", "Basic !!!", "Basic YWxpY2U=", "Basic " + "A" * 5000):
        assert parse_basic(bad) is None


def test_successful_checks_are_cached_and_bcrypt_is_budgeted_per_source() -> None:
    async def scenario() -> None:
        now = [0.0]
        auth = BasicAuth({"alice": bcrypt_hash("pw").encode()}, clock=lambda: now[0])

        async def check(user: str, password: str, source: str = "10.0.0.1") -> int:
            verdict = auth.check(httpx.BasicAuth(user, password)._auth_header, source)
            return verdict if isinstance(verdict, int) else await verdict

        assert await check("alice", "pw") == 0
        for _ in range(50):
            assert (
                auth.check(httpx.BasicAuth("alice", "pw")._auth_header, "10.0.0.1") == 0
            )  # cached: no future
        assert auth.bcrypt_checks == 1
        # Wrong guesses from one source: each distinct one costs a bcrypt until that source's budget is spent,
        # then they are refused at once with 429; another source still gets its checks.
        results = [await check("alice", f"guess{i}") for i in range(40)]
        assert set(results) == {401, 429}
        assert auth.bcrypt_checks <= 1 + 8
        assert auth.refused_over_budget >= 30
        assert await check("alice", "guess0") == 401  # a cached failure costs nothing and is no 429
        assert await check("mallory", "pw", source="10.0.0.2") == 401  # unknown user: dummy compares
        assert await check("alice", "x" * 200, source="10.0.0.2") == 401  # > 72 bytes: refused, no crash
        assert auth.check(httpx.BasicAuth("alice", "pw")._auth_header, "10.0.0.1") == 0
        auth.close()

    asyncio.run(scenario())


# --- real TLS on loopback -----------------------------------------------------------------------------------------


def test_tls_with_basic_auth(tmp_path: Path, pki: Pki) -> None:
    cert, key, _ = pki.issue("server")
    path = write_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
            "basic_auth_users": {"prometheus": bcrypt_hash(PASSWORD, rounds=10)},
            "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}},
        },
    )
    web = WebSecurity(path)
    with serve(web) as running:
        base = f"https://127.0.0.1:{running.port}"
        with httpx.Client(verify=client_context(pki.ca_file), timeout=10) as http:
            health = http.get(base + "/healthz")
            assert health.status_code == 200  # probes need no password
            for target in ("/metrics", "/", "/readyz", "/nope"):
                missing = http.get(base + target)
                assert missing.status_code == 401, target
                assert missing.headers["www-authenticate"] == f'Basic realm="{REALM}", charset="UTF-8"'
                assert PASSWORD not in missing.text
            wrong = http.get(base + "/metrics", auth=("prometheus", "wrong"))
            assert wrong.status_code == 401
            assert "www-authenticate" in wrong.headers
            assert http.get(base + "/metrics", auth=("someone", PASSWORD)).status_code == 401
            ok = http.get(base + "/metrics", auth=("prometheus", PASSWORD))
            assert ok.status_code == 200
            assert "bifrost_batch_exporter_build_info" in ok.text
            assert ok.headers["x-content-type-options"] == "nosniff"
            assert http.get(base + "/", auth=("prometheus", PASSWORD)).status_code == 200
            # A scrape pays bcrypt once, then hits the cache.
            checks = web.auth.bcrypt_checks
            for _ in range(20):
                assert http.get(base + "/metrics", auth=("prometheus", PASSWORD)).status_code == 200
            assert web.auth.bcrypt_checks == checks
        # Plain HTTP to the TLS port gets no metrics, but a 400 that says why (as Go's server answers).
        plain = httpx.get(f"http://127.0.0.1:{running.port}/metrics", timeout=5)
        assert plain.status_code == 400
        assert "HTTP request to an HTTPS server" in plain.text


def test_mtls_requires_a_client_certificate_from_the_ca(tmp_path: Path, pki: Pki) -> None:
    cert, key, _ = pki.issue("server")
    client_cert, client_key, _ = pki.issue("scraper", client=True)
    stranger = Pki(tmp_path / "other", "other")
    bad_cert, bad_key, _ = stranger.issue("intruder", client=True)
    path = write_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": {
                "cert_file": str(cert),
                "key_file": str(key),
                "client_ca_file": str(pki.ca_file),
                "client_auth_type": "RequireAndVerifyClientCert",
            }
        },
    )
    with serve(WebSecurity(path)) as running:
        url = f"https://127.0.0.1:{running.port}/metrics"
        ok = httpx.get(url, verify=client_context(pki.ca_file, (client_cert, client_key)), timeout=10)
        assert ok.status_code == 200
        for ctx in (client_context(pki.ca_file), client_context(pki.ca_file, (bad_cert, bad_key))):
            with pytest.raises(httpx.TransportError):
                httpx.get(url, verify=ctx, timeout=10)
        # The server survived the refusals.
        assert (
            httpx.get(
                url, verify=client_context(pki.ca_file, (client_cert, client_key)), timeout=10
            ).status_code
            == 200
        )


def test_certificate_rotation_and_user_changes_need_no_restart(tmp_path: Path, pki: Pki) -> None:
    cert, key, serial_a = pki.issue("server")
    path = write_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
            "basic_auth_users": {"prometheus": bcrypt_hash("old-pw")},
        },
    )
    web = WebSecurity(path)
    with serve(web) as running:
        port = running.port
        assert peer_serial(port, pki.ca_file) == serial_a

        # Rotate: a new key and certificate from a new CA, written over the same files (as cert-manager does).
        rotated = Pki(tmp_path / "pki2", "two")
        new_cert, new_key, serial_b = rotated.issue("server")
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        wait_until(lambda: quietly(lambda: peer_serial(port, rotated.ca_file)) == serial_b, timeout=5)
        with pytest.raises(ssl.SSLError):
            peer_serial(port, pki.ca_file)  # the old CA no longer vouches for what is served

        # New users take effect the same way; the old password stops working.
        time.sleep(0.05)
        write_config(
            path,
            {
                "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
                "basic_auth_users": {"prometheus": bcrypt_hash("new-pw")},
            },
        )
        http = httpx.Client(verify=client_context(rotated.ca_file), timeout=10)
        url = f"https://127.0.0.1:{port}/metrics"
        wait_until(lambda: http.get(url, auth=("prometheus", "new-pw")).status_code == 200, timeout=5)
        assert http.get(url, auth=("prometheus", "old-pw")).status_code == 401

        # A broken file is reported and the working configuration stays.
        reloads = web.reloads
        key.write_text("not a key")
        # Any request or handshake notices the change (the CLI also runs web.watch(), a once-a-second check).
        wait_until(
            lambda: http.get(url, auth=("prometheus", "new-pw")).is_success and web.failed_reloads >= 1,
            timeout=5,
        )
        assert web.reloads == reloads
        assert peer_serial(port, rotated.ca_file) == serial_b
        assert http.get(url, auth=("prometheus", "new-pw")).status_code == 200
        http.close()


def test_sighup_reloads_the_web_config(tmp_path: Path) -> None:
    """A real process: SIGHUP re-reads the file (and does not kill the exporter, as SIGHUP's default would)."""
    path = write_config(tmp_path / "web.yml", {"basic_auth_users": {"prometheus": bcrypt_hash("pw")}})
    port = free_port()
    env = {
        **os.environ,
        "BIFROST_EXPORTER_WEB_CONFIG_FILE": str(path),
        "BIFROST_EXPORTER_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "BIFROST_EXPORTER_LOG_FORMAT": "json",
        "BIFROST_EXPORTER_PROVIDERS": "openai",
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "exporter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--demo"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=20)
        assert httpx.get(url + "/metrics", auth=("prometheus", "pw"), timeout=5).status_code == 200
        write_config(path, {"basic_auth_users": {"prometheus": bcrypt_hash("pw2")}})
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: '"trigger": "sighup"' in log.read_text(), timeout=10)
        assert proc.poll() is None
        assert httpx.get(url + "/metrics", auth=("prometheus", "pw2"), timeout=5).status_code == 200
        assert httpx.get(url + "/metrics", auth=("prometheus", "pw"), timeout=5).status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "web_config_reloaded" in text
    assert "pw2" not in text.replace(str(path), "")


# --- a real Prometheus -------------------------------------------------------------------------------------------


def test_prometheus_scrapes_over_tls_with_basic_auth(tmp_path: Path, pki: Pki, simulator: Simulator) -> None:
    from tests.promstack import Prometheus, static_scrape

    prom_bin = require_tool("prometheus")
    cert, key, _ = pki.issue("server")
    path = write_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
            "basic_auth_users": {"prometheus": bcrypt_hash(PASSWORD, rounds=10)},
        },
    )
    with serve_exporter(simulator, WebSecurity(path)) as running:
        target = f"127.0.0.1:{running.exporter.port}"
        tls = {"ca_file": str(pki.ca_file)}
        scrapes = [
            static_scrape(
                "secure",
                target,
                scheme="https",
                tls_config=tls,
                basic_auth={"username": "prometheus", "password": PASSWORD},
            ),
            static_scrape(
                "wrong_password",
                target,
                scheme="https",
                tls_config=tls,
                basic_auth={"username": "prometheus", "password": "nope"},
            ),
        ]
        with Prometheus(prom_bin, tmp_path / "prom", scrape_configs=scrapes) as prom:
            prom.wait_for_targets_up(job="secure", timeout=60)
            series = prom.wait_for_series(
                'bifrost_batch_exporter_up{job="secure",provider="openai"}', timeout=60
            )
            assert series

            def refused() -> bool:
                targets = [t for t in prom.active_targets() if t["labels"].get("job") == "wrong_password"]
                return bool(targets) and targets[0]["health"] == "down" and "401" in targets[0]["lastError"]

            wait_until(refused, timeout=30)
