"""A batch id is always exactly one path segment of the retrieve route on the wire, or is not sent at all.

The class: any id a gateway can list, including the ones URL layers rewrite. "." and ".." are dot-segments that
URL normalisation removes (RFC 3986 5.2.4; a normalising server or proxy decodes `%2E` first), so `/v1/batches/..`
reaches the gateway as `/v1` and `/v1/batches/.` as the list route (shown below); "" names the list route. Those three are refused without a
request; every other id (dots and slashes inside included) is sent as one segment that decodes back to itself. The request line is
recorded raw by a loopback gateway, through the client's real HTTP stack, so no URL layer can hide a rewrite.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.client import id_segment
from tests.test_client import Gateway, gateway, retrieve_once, settings_for

__all__ = ["gateway"]  # the fixture, shared with test_client

REWRITTEN = ["", ".", ".."]
KEPT = [
    "...",
    "..;",
    ". .",
    "batch_.",
    "%2E%2E",
    "%2e",
    ".hidden",
    "..a",
    "./x",
    "x/..",
    "a/../b",
    "a//b",
    "/a",
    "a/",
]


def _wire(gw: Gateway) -> list[str]:
    return [s.path for s in gw.seen]


def _normalised(path: str) -> str:
    """`path` after RFC 3986 5.2.4 remove_dot_segments, what every normalising URL layer does to a path."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
            continue
        if last:
            out.append("")  # a final dot-segment leaves the path ending in "/"
    return "/" + "/".join(out)


def test_what_the_url_layers_do_to_dot_segments() -> None:
    """Why the refusal: a normalising server or proxy on the way turns these into other routes."""
    assert _normalised("/v1/batches/..") == "/v1/"
    assert _normalised("/v1/batches/.") == "/v1/batches/"  # the list route
    assert _normalised("/v1/batches/" + unquote("%2E%2E")) == "/v1/"  # an encoded dot, once decoded


@pytest.mark.parametrize("batch_id", REWRITTEN)
def test_ids_a_url_layer_would_rewrite_are_not_sent(
    gateway: Callable[..., tuple[Gateway, str]], batch_id: str
) -> None:
    gw, url = gateway(lambda seen: (200, {"id": batch_id, "status": "completed"}))
    result = retrieve_once(settings_for(url, ["openai"]), "openai", batch_id)
    assert _wire(gw) == []
    assert result.batch is None and result.failure is not None
    assert result.failure.reason == "invalid_response" and "another route" in result.failure.detail


@pytest.mark.parametrize("batch_id", KEPT)
def test_other_dotted_ids_stay_one_segment_on_the_wire(
    gateway: Callable[..., tuple[Gateway, str]], batch_id: str
) -> None:
    gw, url = gateway(lambda seen: (200, {"id": batch_id, "status": "completed"}))
    result = retrieve_once(settings_for(url, ["openai"]), "openai", batch_id)
    assert _wire(gw) == [f"/v1/batches/{id_segment(batch_id)}"]
    raw = gw.seen[0].path.removeprefix("/v1/batches/")
    assert "/" not in raw and unquote(raw) == batch_id  # the gateway decodes the segment back to the id
    assert result.batch is not None and result.batch.id == batch_id


@given(st.text(max_size=40))
def test_any_id_is_refused_or_one_segment_that_decodes_back(batch_id: str) -> None:
    segment = id_segment(batch_id)
    if segment is None:
        assert batch_id in ("", ".", "..")
        return
    assert segment not in ("", ".", "..")
    assert not {"/", "?", "#"} & set(segment)
    assert unquote(segment) == batch_id
    # What a URL layer does to the path (dot-segment removal) cannot change it.
    assert _normalised("/v1/batches/" + segment) == "/v1/batches/" + segment
