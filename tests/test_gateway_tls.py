"""An HTTPS gateway: `ca_file` and `tls_verify` decide whether the exporter trusts it."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.simulator import ProviderSpec, Simulator
from tests.harness import ExporterThread, make_settings, value
from tests.test_webconfig import Pki


@pytest.fixture
def tls_gateway(tmp_path: Path) -> Iterator[tuple[Simulator, Pki]]:
    pki = Pki(tmp_path / "gw", "gateway")
    cert, key, _ = pki.issue("gateway")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    sim = Simulator(providers=[ProviderSpec("openai")], lifecycle=False)
    sim.add_batch("openai", batch_id="a", status="in_progress")
    sim.start(ssl_context=ctx)
    try:
        yield sim, pki
    finally:
        sim.stop()


def _poll(url: str, **settings: object) -> tuple[float | None, float | None]:
    with ExporterThread(make_settings(url, ["openai"], **settings)) as exp:
        exp.poll()
        s = exp.samples()
    return (
        value(s, "bifrost_batch_exporter_up", provider="openai"),
        value(s, "bifrost_batch_exporter_poll_errors_total", provider="openai", reason="connection"),
    )


def test_ca_file_makes_a_private_gateway_trusted(tls_gateway: tuple[Simulator, Pki]) -> None:
    sim, pki = tls_gateway
    assert sim.url.startswith("https://")
    assert _poll(sim.url, ca_file=pki.ca_file) == (1, 0)


def test_untrusted_certificate_is_a_connection_failure(tls_gateway: tuple[Simulator, Pki]) -> None:
    sim, _ = tls_gateway
    assert _poll(sim.url) == (0, 1)


def test_tls_verify_false_skips_verification(tls_gateway: tuple[Simulator, Pki]) -> None:
    sim, _ = tls_gateway
    assert _poll(sim.url, tls_verify=False) == (1, 0)
