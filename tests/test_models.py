"""Parsing the gateway's pages: lenient about versions and spellings, strict about the envelope."""

from __future__ import annotations

import json

import pytest

from exporter.models import InvalidResponseError, error_code, normalize_status, parse_page


def page(items: list[object], **envelope: object) -> bytes:
    return json.dumps({"object": "list", "data": items, **envelope}).encode()


def test_omitted_has_more_means_false_and_cursor_spellings() -> None:
    p = parse_page(page([{"id": "a"}]))
    assert p.has_more is False and p.next_cursor is None and p.last_id is None
    p = parse_page(page([], has_more=True, next_cursor="abc=", last_id="z"))
    assert p.has_more and p.next_cursor == "abc=" and p.last_id == "z" and p.batches == ()


def test_field_spellings_nulls_and_unknown_fields() -> None:
    item = {
        "id": 12345,
        "status": "canceled",
        "canceled_at": 1700000000,
        "created_at": None,
        "metadata": None,
        "request_counts": {"total": "10", "completed": 3, "failed": None, "cancelled": 2},
        "brand_new_field": {"nested": [1, 2, 3]},
        "raw_response": {"a": [{"b": "c"}]},
        "extra_fields": {"latency": 250, "cache_debug": {"cache_hit": True, "hit_type": None}},
    }
    ended = {"id": "msgbatch_1", "status": "ended", "ended_at": 1700000100}
    p = parse_page(page([item, ended], extra_fields={"latency": 1500, "provider": "openai"}))
    a, b = p.batches
    assert a.id == "12345" and a.normalized_status == "cancelled"
    assert a.terminal_timestamp("cancelled") == 1700000000
    assert a.created is None
    assert a.request_counts is not None
    assert (
        a.request_counts.get("total"),
        a.request_counts.get("failed"),
        a.request_counts.get("canceled"),
    ) == (10, 0, 2)
    assert b.terminal_timestamp("ended") == 1700000100
    assert p.latency_seconds == 1.5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("canceled", "cancelled"),
        ("CANCELLED", "cancelled"),
        ("In_Progress", "in_progress"),
        (None, "unknown"),
        ("", "unknown"),
        ("JOB_STATE_QUEUED", "JOB_STATE_QUEUED"),
        ("x" * 200, "x" * 64),
    ],
)
def test_normalize_status(raw: str | None, expected: str) -> None:
    assert normalize_status(raw) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"object":"batch","id":"x"}',
        b'{"data": 5}',
        b'{"object":"list"}',
        b'{"object":"list","data":[]',
        b"\xff\xfe",
        b"[" * 100000 + b"]" * 100000,
        b"null",
        b'"list"',
    ],
)
def test_not_a_list_page_is_invalid(body: bytes) -> None:
    with pytest.raises(InvalidResponseError):
        parse_page(body)


def test_one_bad_item_does_not_hide_the_rest() -> None:
    p = parse_page(
        page([{"id": "ok1"}, {"status": "completed"}, "a string", {"id": "ok2", "created_at": "soon"}])
    )
    assert [b.id for b in p.batches] == ["ok1"]
    assert p.skipped_items == 3 and p.first_skip_error


def test_timestamps_that_cannot_be_times_are_ignored() -> None:
    p = parse_page(
        page([{"id": "a", "status": "completed", "created_at": -5, "completed_at": 1e308, "expires_at": 0}])
    )
    (a,) = p.batches
    assert a.created is None and a.expires is None
    assert a.terminal_timestamp("completed") is None  # finite but beyond year 5138: garbage, not a time


def test_error_code() -> None:
    body = json.dumps(
        {
            "is_bifrost_error": False,
            "status_code": 400,
            "error": {"code": "unsupported_operation", "message": "batch_list is not supported"},
        }
    )
    assert error_code(body.encode()) == ("unsupported_operation", None)
    assert error_code(b'{"error":{"type":"virtual_key_required","message":"x"}}') == (
        None,
        "virtual_key_required",
    )
    assert error_code(b"<html>") == (None, None)
