"""A web-config reload applies whole to the next TLS handshake, never half (issue 15, reproduction 6).

Two configurations, each with its own server certificate so a client can tell which one it met:
A serves certificate A and asks for no client certificate; B serves certificate B and requires a verified one.
A connection without a client certificate must get a response exactly when it met A; meeting B must mean refusal.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from cryptography import x509

from exporter.webconfig import WebSecurity
from tests.harness import wait_until
from tests.test_http_framing import ServerThread, exchange, statuses
from tests.test_webconfig import Pki

VERSIONS = {"TLS 1.2": ssl.TLSVersion.TLSv1_2, "TLS 1.3": ssl.TLSVersion.TLSv1_3}


class Setup:
    def __init__(self, directory: Path) -> None:
        self.pki = Pki(directory / "pki", "reload")
        cert_a, key_a, self.serial_a = self.pki.issue("server-a")
        cert_b, key_b, self.serial_b = self.pki.issue("server-b")
        self.config_a = directory / "a.yml"
        self.config_a.write_text(
            yaml.safe_dump({"tls_server_config": {"cert_file": str(cert_a), "key_file": str(key_a)}})
        )
        self.config_b = directory / "b.yml"
        self.config_b.write_text(
            yaml.safe_dump(
                {
                    "tls_server_config": {
                        "cert_file": str(cert_b),
                        "key_file": str(key_b),
                        "client_auth_type": "RequireAndVerifyClientCert",
                        "client_ca_file": str(self.pki.ca_file),
                    }
                }
            )
        )
        self.path = directory / "web.yml"
        self.use("a")

    def use(self, which: str) -> None:
        """Swap the live file atomically, as a config-management tool or a Kubernetes Secret update does."""
        source = self.config_a if which == "a" else self.config_b
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(source.read_bytes())
        os.replace(tmp, self.path)


def attempt(port: int, ca_file: Path, version: ssl.TLSVersion) -> tuple[int | None, int | None]:
    """(serial of the server certificate met, HTTP status) for a client without a certificate; None where the
    handshake or the request was refused."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.minimum_version = ctx.maximum_version = version
    serial = None
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            serial = int(x509.load_der_x509_certificate(der).serial_number)
            tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    except (ssl.SSLError, OSError):
        return serial, None
    return serial, (int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None)


@pytest.mark.parametrize("version", list(VERSIONS), ids=list(VERSIONS))
def test_first_connection_after_a_change_to_require_client_certs_is_refused(
    tmp_path: Path, version: str
) -> None:
    setup = Setup(tmp_path)
    web = WebSecurity(setup.path)  # the default: every handshake looks for a changed file, as Go re-reads it
    with ServerThread(tls=web.ssl_context) as srv:
        assert attempt(srv.port, setup.pki.ca_file, VERSIONS[version]) == (setup.serial_a, 200)
        setup.use("b")  # no wait: the very next connection
        # The very first handshake after the change notices it, and must get all of B: no certificate, no entry.
        serial, status = attempt(srv.port, setup.pki.ca_file, VERSIONS[version])
        assert status is None
        assert serial in (None, setup.serial_b)  # TLS 1.2 fails before a client can read the certificate
        assert web.reloads == 1


@pytest.mark.parametrize("version", list(VERSIONS), ids=list(VERSIONS))
def test_reload_race_never_mixes_two_configs(tmp_path: Path, version: str) -> None:
    setup = Setup(tmp_path)
    web = WebSecurity(setup.path, check_interval=3600.0)  # reloads come only from the toggling thread
    stop = threading.Event()
    outcomes: list[tuple[int | None, int | None]] = []

    with ServerThread(tls=web.ssl_context) as srv:

        def toggle() -> None:
            which = "a"
            while not stop.is_set():
                which = "b" if which == "a" else "a"
                setup.use(which)
                done = threading.Event()

                def reload_now(done: threading.Event = done) -> None:
                    web.reload("test")
                    done.set()

                srv.loop.call_soon_threadsafe(reload_now)
                done.wait(5)

        toggler = threading.Thread(target=toggle, daemon=True)
        toggler.start()
        try:
            while len(outcomes) < 150 or not _both_seen(outcomes, setup):
                outcomes.append(attempt(srv.port, setup.pki.ca_file, VERSIONS[version]))
                assert len(outcomes) < 2000, "never met both configurations"
        finally:
            stop.set()
            toggler.join(timeout=10)
    assert web.reloads > 10
    for serial, status in outcomes:
        if serial == setup.serial_a:
            assert status == 200, "certificate A with B's client-certificate policy: half a reload"
        elif serial == setup.serial_b:
            assert status is None, "certificate B served without a client certificate: half a reload"
        else:
            assert status is None  # refused during the handshake: only B refuses


def _both_seen(outcomes: list[tuple[int | None, Any]], setup: Setup) -> bool:
    statuses = {status for _, status in outcomes}
    return 200 in statuses and None in statuses


def test_a_changed_file_applies_to_the_very_next_request(tmp_path: Path) -> None:
    """Plain HTTP too: Go re-reads the file for every request, so a changed user list applies to the next one, not
    up to a second later (issue 19: it took ~1.75 s). The file is changed both ways an operator does: replaced
    (a new inode) and rewritten in place."""
    path = tmp_path / "web.yml"

    def users(password: str) -> bytes:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
        return yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}).encode()

    def status(port: int, password: str) -> int:
        token = base64.b64encode(f"prometheus:{password}".encode())
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic " + token
        data, _ = exchange(port, head + b"\r\n\r\n")
        return statuses(data)[0]

    path.write_bytes(users("one"))
    web = WebSecurity(path)
    with ServerThread(guard=web) as srv:
        assert status(srv.port, "one") == 200
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(users("two"))
        os.replace(tmp, path)
        assert (status(srv.port, "two"), status(srv.port, "one")) == (200, 401)
        # In place: same inode, same size. Once the file system's clock has ticked past the last change, as any
        # edit by a person or a config tool is.
        probe = tmp_path / "probe"
        wait_until(
            lambda: probe.write_bytes(b"") == 0 and probe.stat().st_mtime_ns != path.stat().st_mtime_ns
        )
        path.write_bytes(users("three"))
        assert (status(srv.port, "three"), status(srv.port, "two")) == (200, 401)
    assert web.reloads == 2
