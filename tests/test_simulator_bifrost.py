"""The simulator reproduces the real gateway's quirks, each as read in Bifrost's Go source (maximhq/bifrost), so
that suites fail where a real deployment would misreport. One test per quirk; the file each comes from is named.
The kind behaviour stays reachable only through explicit ProviderSpec/Simulator switches, tested here too."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from exporter.models import Batch, normalize_status
from exporter.risk import CONFIRM, ProgressTracker, assess
from exporter.simulator import (
    DEFAULT_PROVIDERS,
    NEWEST_EXTRA_PROVIDERS,
    NEWEST_PROVIDERS,
    ProviderSpec,
    Simulator,
    decode_cursor,
)

T0 = 1_700_000_000.0
NO_RAW = {"x-bf-send-back-raw-response": "false"}
_SSL = ssl.create_default_context()


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    with Simulator(lifecycle=False, clock=clock) as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10, verify=_SSL) as c:
        yield c


def page(c: httpx.Client, provider: str, **params: Any) -> dict[str, Any]:
    r = c.get("/v1/batches", params={"provider": provider, **params}, headers=NO_RAW)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# ---- pagination: transports/bifrost-http/handlers/inference.go batchList fills only After (and BeforeID) ------


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "bedrock"])
def test_after_never_reaches_providers_that_read_another_field(
    sim: Simulator, client: httpx.Client, provider: str
) -> None:
    """Anthropic reads AfterID, Gemini and Bedrock PageToken (core/providers/*/BatchList): every `after=` gets page
    1 again with the same next_cursor."""
    ids = [sim.add_batch(provider, created_at=int(T0) - i)["id"] for i in range(5)]
    first = page(client, provider, limit=2)
    assert [b["id"] for b in first["data"]] == ids[:2]
    assert first["has_more"] is True
    again = page(client, provider, limit=2, after=first["next_cursor"])
    assert again["data"] == first["data"]
    assert again["next_cursor"] == first["next_cursor"]
    assert page(client, provider, limit=2, after="garbage")["data"] == first["data"]  # not even read


def test_openai_reads_after_and_walks_every_key(sim: Simulator, client: httpx.Client) -> None:
    ids = [sim.add_batch("openai", created_at=int(T0) - i)["id"] for i in range(5)]
    seen: list[str] = []
    body = page(client, "openai", limit=2)
    cursors = []
    while True:
        seen += [b["id"] for b in body["data"]]
        if not body.get("has_more"):
            break
        cursors.append(body["next_cursor"])
        body = page(client, "openai", limit=2, after=body["next_cursor"])
    assert sorted(seen) == sorted(ids * 2)  # keys 1 and 2 of one org list the same batches
    assert len(cursors) == len(set(cursors))


def test_after_ignored_false_is_the_kind_gateway_for_tests_that_need_paging(clock: FakeClock) -> None:
    spec = ProviderSpec("anthropic", flavor="anthropic", after_ignored=False)
    with Simulator(providers=[spec], lifecycle=False, clock=clock) as s, httpx.Client(base_url=s.url) as c:
        ids = [s.add_batch("anthropic", created_at=int(T0) - i)["id"] for i in range(3)]
        first = page(c, "anthropic", limit=2)
        second = page(c, "anthropic", limit=2, after=first["next_cursor"])
    assert [b["id"] for b in first["data"] + second["data"]] == ids


def test_limit_above_the_providers_maximum_is_the_providers_400(sim: Simulator, client: httpx.Client) -> None:
    """The gateway passes `limit` through; OpenAI refuses more than 100 (and the kind simulator capped at 1000)."""
    sim.add_batch("openai")
    assert (
        client.get("/v1/batches", params={"provider": "openai", "limit": 100}, headers=NO_RAW).status_code
        == 200
    )
    r = client.get("/v1/batches", params={"provider": "openai", "limit": 101})
    assert r.status_code == 400
    body = r.json()
    assert body["is_bifrost_error"] is False
    assert body["error"]["code"] == "integer_above_max_value"
    assert body["extra_fields"]["provider"] == "openai"
    maxima = {s.name: s.limit_maximum for s in DEFAULT_PROVIDERS if s.supported}
    assert maxima == {
        "openai": 100,
        "azure": 100,
        "anthropic": 1000,
        "bedrock": 1000,
        "gemini": 1000,
        "vertex": None,
    }


# ---- shapes: core/schemas/batch.go and each provider's converter -----------------------------------------------


def test_bedrock_lists_summaries_and_retrieve_is_richer(sim: Simulator, client: httpx.Client) -> None:
    """core/providers/bedrock/batch.go: list summaries carry id, status, created_at; retrieve adds the S3 input and
    output, expires_at and the job's EndTime as completed_at, whatever way it ended. No counts either way."""
    b = sim.add_batch("bedrock", status="failed", created_at=int(T0) - 600)
    item = page(client, "bedrock")["data"][0]
    assert item == {
        "id": b["id"],
        "object": "batch",
        "status": "failed",
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "created_at": int(T0) - 600,
    }
    job_id = b["id"].rsplit("/", 1)[1]  # GetModelInvocationJob takes the job id for the ARN (S12)
    got = client.get(f"/v1/batches/{job_id}", params={"provider": "bedrock"}, headers=NO_RAW).json()
    assert got["id"] == b["id"]  # answered with the ARN the list gave
    assert got["completed_at"] == int(T0)  # EndTime, although the job failed
    assert "failed_at" not in got
    assert got["expires_at"] == int(T0) - 600 + 86_400
    assert got["input_file_id"].startswith("s3://")
    assert got["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert got["extra_fields"]["request_type"] == "batch_retrieve"


def test_gemini_lists_summaries_and_retrieve_counts_processed_as_completed(
    sim: Simulator, client: httpx.Client
) -> None:
    """core/providers/gemini: list items id, status, created_at, operation_name; retrieve adds done and counts from
    batchStats where `completed` = total − pending (successes and failures) and `failed` = completed − succeeded."""
    counts = {"total": 10, "completed": 6, "failed": 2}
    b = sim.add_batch("gemini", status="in_progress", created_at=int(T0) - 60, request_counts=counts)
    item = page(client, "gemini")["data"][0]
    assert set(item) == {
        "id",
        "object",
        "status",
        "request_counts",
        "created_at",
        "operation_name",
        "extra_fields",
    }
    assert item["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    short = b["id"].removeprefix("batches/")  # batchRetrieveByKey adds the prefix itself (S10)
    got = client.get(f"/v1/batches/{short}", params={"provider": "gemini"}).json()
    assert got["id"] == b["id"]
    assert got["request_counts"] == {"total": 10, "completed": 8, "failed": 2, "succeeded": 6, "pending": 2}
    assert got["done"] is False
    assert got["operation_name"] == b["id"]
    assert "expires_at" not in got and "in_progress_at" not in got


@pytest.mark.parametrize("provider", ["bedrock", "gemini"])
def test_a_full_id_holding_a_slash_cannot_travel_in_one_path_segment(
    sim: Simulator, client: httpx.Client, provider: str
) -> None:
    """Bifrost's retrieve route is one path segment, handed to the provider unescaped (docs/providers.md
    "Retrieve"): the full id splits the route as is and reaches the provider still escaped as %2F. The simulator
    used to answer both, so the suite only ever exercised the fallback that fails in production."""
    b = sim.add_batch(provider, status="in_progress", created_at=int(T0) - 60)
    full = b["id"]
    for target in (f"/v1/batches/{full}", f"/v1/batches/{quote(full, safe='')}"):
        r = client.get(target, params={"provider": provider})
        assert r.status_code == 404, (target, r.text)
        assert r.json()["is_bifrost_error"] is False  # the provider's not found, passed on
    short = full.rsplit("/", 1)[1]
    assert client.get(f"/v1/batches/{short}", params={"provider": provider}).json()["id"] == full


def test_sparse_items_false_keeps_full_list_items_for_old_tests(clock: FakeClock) -> None:
    spec = ProviderSpec("gemini", flavor="gemini", sparse_items=False)
    with Simulator(providers=[spec], lifecycle=False, clock=clock) as s, httpx.Client(base_url=s.url) as c:
        s.add_batch("gemini", request_counts={"total": 10, "completed": 1, "failed": 0}, progress=40)
        item = page(c, "gemini")["data"][0]
    assert item["request_counts"]["total"] == 10
    assert item["progress"] == 40


def test_retrieve_is_the_list_item_for_openai_shaped_and_anthropic(
    sim: Simulator, client: httpx.Client
) -> None:
    for provider in ("openai", "azure", "anthropic"):
        b = sim.add_batch(provider, status="in_progress")
        params: dict[str, Any] = {"limit": 100}
        if provider == "openai":
            params["after"] = _key1()
        listed = next(i for i in page(client, provider, **params)["data"] if i["id"] == b["id"])
        got = client.get(f"/v1/batches/{b['id']}", params={"provider": provider}, headers=NO_RAW).json()
        assert {k: v for k, v in got.items() if k != "extra_fields"} == {
            k: v for k, v in listed.items() if k != "extra_fields"
        }, provider
        assert got["extra_fields"]["request_type"] == "batch_retrieve"


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("openai", {"type": "invalid_request_error", "message": "No batch found with id 'gone'."}),
        ("anthropic", {"type": "not_found_error", "message": "Not found"}),
        ("gemini", {"message": "Requested entity was not found."}),
        ("bedrock", {"message": "Could not find job gone"}),
    ],
)
def test_unknown_or_deleted_batch_is_the_providers_404(
    sim: Simulator, client: httpx.Client, provider: str, expected: dict[str, str]
) -> None:
    """Retrieve tries each key and returns the provider's own error (is_bifrost_error false, status kept)."""
    r = client.get("/v1/batches/gone", params={"provider": provider})
    assert r.status_code == 404
    assert r.json() == {
        "is_bifrost_error": False,
        "status_code": 404,
        "error": expected,
        "extra_fields": {"provider": provider, "request_type": "batch_retrieve"},
    }
    b = sim.add_batch(provider)
    sim.delete(provider, b["id"])
    assert client.get(f"/v1/batches/{b['id']}", params={"provider": provider}).status_code == 404


def test_lifecycle_statuses_follow_each_provider(clock: FakeClock) -> None:
    """Anthropic: in_progress/cancelling/ended only; Bedrock and Gemini never finalize (no such state); Gemini
    never validates (PENDING is in_progress); Vertex's queued arrives as validating."""
    s = Simulator(clock=clock, seed=5, initial_batches=200, max_batches=1000, troubled=False)
    statuses = {p: {b["status"] for b in s.batches(p)} for p in ("anthropic", "bedrock", "gemini", "vertex")}
    assert statuses["anthropic"] <= {"in_progress", "cancelling", "ended"}
    assert "ended" in statuses["anthropic"]
    assert "finalizing" not in statuses["bedrock"] | statuses["gemini"]
    assert "validating" not in statuses["gemini"]
    assert {"failed", "expired", "cancelled", "completed"} <= statuses["bedrock"]
    assert not any(x.startswith("JOB_STATE") for x in statuses["vertex"])


# ---- raw-response echo: transports/bifrost-http/lib/ctx.go, core/providers/utils ShouldSendBackRawResponse ------


def test_raw_response_is_echoed_on_every_item_unless_the_client_says_false(
    sim: Simulator, client: httpx.Client
) -> None:
    ids = [sim.add_batch("openai", created_at=int(T0) - i)["id"] for i in range(3)]
    echoed = client.get("/v1/batches", params={"provider": "openai", "limit": 5, "after": _key1()}).json()
    assert [i["id"] for i in echoed["data"]] == ids
    raws = [i["extra_fields"]["raw_response"] for i in echoed["data"]]
    assert all(raw == raws[0] for raw in raws)  # the whole raw page, once per item
    assert [b["id"] for b in raws[0]["data"]] == ids
    quiet = page(client, "openai", limit=5, after=_key1())
    assert all("raw_response" not in i["extra_fields"] for i in quiet["data"])
    got = client.get(f"/v1/batches/{ids[0]}", params={"provider": "openai"}).json()
    assert got["extra_fields"]["raw_response"]["id"] == ids[0]
    log = sim.request_log()
    assert [e["raw_response_header"] for e in log[-3:]] == [None, "false", None]


def test_older_transports_let_the_header_only_turn_echo_on(clock: FakeClock) -> None:
    with (
        Simulator(lifecycle=False, clock=clock, raw_header="promote_only") as s,
        httpx.Client(base_url=s.url) as c,
    ):
        s.add_batch("azure")
        body = c.get("/v1/batches", params={"provider": "azure"}, headers=NO_RAW).json()
    assert "raw_response" in body["data"][0]["extra_fields"]  # `false` cannot silence a configured provider
    with (
        Simulator(lifecycle=False, clock=clock, send_back_raw_response=False) as s,
        httpx.Client(base_url=s.url) as c,
    ):
        s.add_batch("azure")
        plain = c.get("/v1/batches", params={"provider": "azure"}).json()
        asked = c.get(
            "/v1/batches", params={"provider": "azure"}, headers={"x-bf-send-back-raw-response": "true"}
        )
    assert "raw_response" not in plain["data"][0]["extra_fields"]
    assert "raw_response" in asked.json()["data"][0]["extra_fields"]


def _key1() -> str:
    from exporter.simulator import encode_cursor

    return encode_cursor(1, None)  # key 0 of the default openai is an empty project


# ---- errors: the gateway's refusals vs the provider's ---------------------------------------------------------


@pytest.mark.parametrize(("style", "status"), [("cursor", 400), ("legacy", 500)])
def test_no_batch_enabled_keys(clock: FakeClock, style: str, status: int) -> None:
    """core's newBifrostErrorFromMsg is not a Bifrost error and has no status: newer transports send it as 400,
    older ones sent every status-less error as 500 (handlers/utils.go SendBifrostError)."""
    spec = ProviderSpec("openai", style=style, batch_keys=False)  # type: ignore[arg-type]
    with Simulator(providers=[spec], lifecycle=False, clock=clock) as s, httpx.Client(base_url=s.url) as c:
        listed = c.get("/v1/batches", params={"provider": "openai"})
        got = c.get("/v1/batches/batch_x", params={"provider": "openai"})
    for r in (listed, got):
        assert r.status_code == status
        assert r.json() == {"is_bifrost_error": False, "error": {"message": "no batch-enabled keys found"}}


def test_gemini_hides_a_missing_list_endpoint_as_an_empty_list(sim: Simulator, client: httpx.Client) -> None:
    """core/providers/gemini batchListByKey: an upstream 404/405 becomes an empty list; others keep the 404."""
    sim.add_batch("gemini")
    sim.add_batch("bedrock")
    sim.set_fault("list_unavailable")
    hidden = page(client, "gemini")
    assert hidden["data"] == []
    assert "has_more" not in hidden
    assert client.get("/v1/batches", params={"provider": "bedrock"}).status_code == 404


def test_faults_can_target_retrieve_and_one_batch(sim: Simulator, client: httpx.Client) -> None:
    a, b = sim.add_batch("openai")["id"], sim.add_batch("openai")["id"]
    sim.set_fault("server_error", provider="openai", endpoint="retrieve", batch_id=a)
    assert client.get(f"/v1/batches/{a}", params={"provider": "openai"}).status_code == 500
    assert client.get(f"/v1/batches/{b}", params={"provider": "openai"}).status_code == 200
    assert client.get("/v1/batches", params={"provider": "openai"}, headers=NO_RAW).status_code == 200
    sim.set_fault("upstream_auth", provider="openai", endpoint="any", times=2)
    assert client.get(f"/v1/batches/{b}", params={"provider": "openai"}).json()["extra_fields"] == {
        "provider": "openai",
        "request_type": "batch_retrieve",
    }
    assert client.get("/v1/batches", params={"provider": "openai"}).status_code == 401
    with pytest.raises(ValueError):
        sim.set_fault("server_error", endpoint="nowhere")


# ---- lifecycle options ----------------------------------------------------------------------------------------


def test_retention_deletes_finished_batches(clock: FakeClock) -> None:
    s = Simulator(
        clock=clock, seed=3, initial_batches=0, troubled=False, arrivals=False, retention_seconds=60
    )
    from exporter.simulator import build_script

    spec = next(p for p in s.providers if p.name == "openai")
    script = build_script([spec], seed=2, batches=5, duration=30.0)
    s.play(script)
    clock.now += 31
    s.tick()
    assert len(s.batches("openai")) == 5
    clock.now += 60
    s.tick()
    assert s.batches("openai") == []


DEMO_PROVIDERS = ("openai", "azure", "anthropic", "bedrock", "vertex")


def test_the_demo_scenario_puts_the_early_warning_to_work(clock: FakeClock) -> None:
    """The demo's default scenario, polled every 30 s for two hours through the gateway's retrieve view and judged by
    the exporter's rule with a tracker per provider: the late batch is flagged within 20 minutes and expires; the
    burst batch, which the v2 linear rule flagged, is never flagged and completes; the never-starting batch is
    flagged two minutes in (risk_no_progress_fraction 0.5, no calibration yet). Each counts once its verdict has
    held for CONFIRM of its 24 h window (20 minutes) on top."""
    s = Simulator(clock=clock, seed=1, initial_batches=0, arrivals=False)
    trackers = {p: ProgressTracker() for p in DEMO_PROVIDERS}
    first_flag: dict[tuple[str, int], float] = {}
    reasons: dict[tuple[str, int], set[str | None]] = {}
    final: dict[tuple[str, int], str] = {}
    linear_at_start: dict[tuple[str, int], bool] = {}
    for poll in range(0, 2 * 3600, 30):
        clock.now = T0 + poll
        s.tick()
        for provider in DEMO_PROVIDERS:
            for raw in s.batches(provider, view="retrieve"):
                key = (provider, _scenario_of(raw))
                final[key] = str(raw["status"])
                batch = Batch.model_validate(raw)
                risk = assess(
                    batch, normalize_status(batch.status), clock.now, 0.5, tracker=trackers[provider]
                )
                if poll == 0:
                    linear_at_start[key] = _at_risk(raw, clock.now)
                if risk.at_risk:
                    first_flag.setdefault(key, poll)
                    reasons.setdefault(key, set()).add(risk.reason)
            trackers[provider].finish_poll()
    for provider in DEMO_PROVIDERS:
        blind = provider in ("anthropic", "bedrock")
        late, never = (provider, LATE), (provider, NEVER)
        confirmed = CONFIRM * 24 * 3600
        assert first_flag[late] <= 20 * 60 + confirmed, provider
        assert reasons[late] == ({"no_progress"} if blind else {"slow"}) | {"overdue"}, provider
        assert final[late] == ("ended" if provider == "anthropic" else "expired"), provider
        assert 120 + confirmed <= first_flag[never] <= 150 + confirmed, provider
        if blind:
            assert (provider, BURST) not in final
            continue
        burst = (provider, BURST)
        assert linear_at_start[burst], provider  # 10 % in 14 h: the v2 rule projected days
        assert burst not in first_flag, provider
        assert final[burst] == "completed", provider


LATE, BURST, NEVER = 20_000, 5_000, 500


def _scenario_of(raw: dict[str, Any]) -> int:
    """The demo's scenarios differ by size, or, where no total shows (validating, Bedrock), by age: the burst batch
    always shows its total."""
    total = int((raw.get("request_counts") or {}).get("total") or 0)
    if total:
        return total
    return LATE if T0 - int(raw["created_at"]) > 20 * 3600 else NEVER


def _done(batch: dict[str, Any]) -> int:
    counts = batch["request_counts"]
    return int(counts.get("completed", 0)) + int(counts.get("failed", 0))


def _at_risk(batch: dict[str, Any], now: float) -> bool:
    """metrics-contract.md "Early warning": a linear projection of done requests, or no progress past half the
    window (risk_no_progress_fraction 0.5)."""
    total = batch["request_counts"]["total"]
    done = _done(batch)
    start = batch.get("in_progress_at") or batch["created_at"]
    if done == 0:
        return bool(now - batch["created_at"] >= 0.5 * (batch["expires_at"] - batch["created_at"]))
    projected = now + (total - done) * (now - start) / done
    return bool(projected > batch["expires_at"])


# ---- newest source: gigachat, openrouter, volcengine -----------------------------------------------------------

GIGACHAT = ProviderSpec("gigachat", flavor="gigachat", keys=2)


@pytest.fixture
def newest(clock: FakeClock) -> Iterator[tuple[Simulator, httpx.Client]]:
    with (
        Simulator(providers=NEWEST_PROVIDERS, lifecycle=False, clock=clock) as s,
        httpx.Client(base_url=s.url, timeout=10) as c,
    ):
        yield s, c


def test_newest_providers_are_kept_out_of_the_defaults() -> None:
    """The demo and the existing suites keep DEFAULT_PROVIDERS until the exporter stops sending `limit` to gigachat."""
    assert {s.name for s in NEWEST_EXTRA_PROVIDERS} == {"gigachat", "openrouter", "volcengine"}
    assert not {s.name for s in DEFAULT_PROVIDERS} & {"gigachat", "openrouter", "volcengine"}
    assert NEWEST_PROVIDERS[: len(DEFAULT_PROVIDERS)] == DEFAULT_PROVIDERS


@pytest.mark.parametrize("limit", ["1", "20", "1000"])
def test_gigachat_refuses_limit_with_a_500_operation_error(
    newest: tuple[Simulator, httpx.Client], limit: str
) -> None:
    """validateGigaChatBatchListRequest (core/providers/gigachat/batch.go @f44330cd): any limit > 0 is an operation
    error, which the transport sends as HTTP 500 with is_bifrost_error true."""
    sim, c = newest
    sim.add_batch("gigachat")
    r = c.get("/v1/batches", params={"provider": "gigachat", "limit": limit})
    assert r.status_code == 500
    assert r.json() == {
        "is_bifrost_error": True,
        "error": {"message": "GigaChat batch list does not support limit pagination"},
        "extra_fields": {"provider": "gigachat", "request_type": "batch_list"},
    }


@pytest.mark.parametrize("limit", ["0", "-5", "abc", ""])
def test_gigachat_accepts_a_limit_the_handler_drops(
    newest: tuple[Simulator, httpx.Client], limit: str
) -> None:
    """The /v1/batches handler keeps `limit` only when it parses as an int > 0: anything else never reaches
    GigaChat's validation."""
    sim, c = newest
    sim.add_batch("gigachat")
    assert c.get("/v1/batches", params={"provider": "gigachat", "limit": limit}).status_code == 200


def test_gigachat_refuses_before_and_reads_after_as_the_serial_cursor(
    newest: tuple[Simulator, httpx.Client],
) -> None:
    sim, c = newest
    sim.add_batch("gigachat")
    before = c.get("/v1/batches", params={"provider": "gigachat", "before": "x"})
    assert before.status_code == 500
    assert before.json()["error"]["message"] == "GigaChat batch list does not support before_id pagination"
    garbage = c.get("/v1/batches", params={"provider": "gigachat", "after": "not-a-cursor"})
    assert garbage.status_code == 500
    assert garbage.json()["error"]["message"] == "invalid pagination cursor"


def test_gigachat_lists_one_whole_page_per_key(clock: FakeClock) -> None:
    """BatchList: the serial helper over the keys, each key's whole list on one page (GigaChat has no paging), so
    `has_more` and `next_cursor` only lead to the next key; first_id and last_id are set."""
    with (
        Simulator(providers=[GIGACHAT], lifecycle=False, clock=clock) as s,
        httpx.Client(base_url=s.url) as c,
    ):
        key0 = [s.add_batch("gigachat", api_key=0, created_at=int(T0) - i)["id"] for i in range(30)]
        key1 = [s.add_batch("gigachat", api_key=1, created_at=int(T0) - i)["id"] for i in range(3)]
        first = c.get("/v1/batches", params={"provider": "gigachat"}).json()
        assert [i["id"] for i in first["data"]] == key0
        assert first["first_id"] == key0[0] and first["last_id"] == key0[-1]
        assert first["has_more"] is True
        assert decode_cursor(first["next_cursor"]) == (1, None)
        second = c.get("/v1/batches", params={"provider": "gigachat", "after": first["next_cursor"]}).json()
        assert [i["id"] for i in second["data"]] == key1
        assert "has_more" not in second and "next_cursor" not in second


def test_gigachat_items_carry_two_timestamps_three_counts_and_provider_extra_fields(
    newest: tuple[Simulator, httpx.Client],
) -> None:
    sim, c = newest
    done = sim.add_batch(
        "gigachat",
        api_key=0,
        status="completed",
        created_at=int(T0) - 600,
        request_counts={"total": 10, "completed": 9, "failed": 1},
    )
    created = sim.add_batch("gigachat", api_key=0, status="validating", created_at=int(T0) - 60)
    failed = sim.add_batch("gigachat", api_key=0, status="failed", created_at=int(T0) - 30)
    items = {i["id"]: i for i in c.get("/v1/batches", params={"provider": "gigachat"}).json()["data"]}
    item = items[done["id"]]
    assert item == {
        "id": done["id"],
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": done["input_file_id"],
        "completion_window": "24h",
        "status": "completed",
        "request_counts": {"total": 10, "completed": 9, "failed": 1},
        "created_at": int(T0) - 600,
        "completed_at": int(T0),
        "output_file_id": done["output_file_id"],
        "provider_extra_fields": {
            "gigachat_batch_method": "chat_completions",
            "gigachat_output_file_id": done["output_file_id"],
            "gigachat_input_file_id": done["input_file_id"],
        },
        "extra_fields": {"provider": "gigachat", "latency": item["extra_fields"]["latency"]},
    }
    assert items[created["id"]]["status"] == "validating"  # GigaChat's "created"
    assert "gigachat_batch_status" not in items[created["id"]]["provider_extra_fields"]
    # A status Bifrost does not map passes through raw and is named in provider_extra_fields.
    assert items[failed["id"]]["provider_extra_fields"]["gigachat_batch_status"] == "failed"
    got = c.get(f"/v1/batches/{done['id']}", params={"provider": "gigachat"}, headers=NO_RAW).json()
    assert {k: v for k, v in got.items() if k != "extra_fields"} == {
        k: v for k, v in item.items() if k != "extra_fields"
    }
    assert got["extra_fields"]["request_type"] == "batch_retrieve"


def test_openrouter_lists_through_the_openai_helper_and_honours_after(
    newest: tuple[Simulator, httpx.Client],
) -> None:
    sim, c = newest
    ids = [sim.add_batch("openrouter", created_at=int(T0) - i)["id"] for i in range(5)]
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        body = page(c, "openrouter", **params)
        seen += [i["id"] for i in body["data"]]
        if not body.get("has_more"):
            break
        params["after"] = body["next_cursor"]
    assert seen == ids
    item = page(c, "openrouter")["data"][0]
    assert "input_file_id" not in item  # requests are inline
    assert item["endpoint"] == "/v1/chat/completions"


def test_volcengine_is_still_unsupported(newest: tuple[Simulator, httpx.Client]) -> None:
    _, c = newest
    r = c.get("/v1/batches", params={"provider": "volcengine"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unsupported_operation"
    assert r.json()["error"]["message"] == "batch_list is not supported by volcengine provider"


def test_gigachat_has_no_cancel_and_results_need_an_output_file(
    newest: tuple[Simulator, httpx.Client],
) -> None:
    """gigachat.go @d187fb6f: BatchCancel is unsupported; BatchResults refuses with an operation error until the
    batch has an output (or result) file."""
    sim, c = newest
    running = sim.add_batch("gigachat", status="in_progress")["id"]
    cancel = c.post(f"/v1/batches/{running}/cancel", params={"provider": "gigachat"})
    assert cancel.status_code == 400
    assert cancel.json()["error"]["message"] == "batch_cancel is not supported by gigachat provider"
    early = c.get(f"/v1/batches/{running}/results", params={"provider": "gigachat"})
    assert early.status_code == 500
    assert early.json()["is_bifrost_error"] is True
    assert early.json()["error"]["message"].startswith("batch results not available: GigaChat did not return")
    done = sim.add_batch("gigachat", status="completed")["id"]
    assert c.get(f"/v1/batches/{done}/results", params={"provider": "gigachat"}).status_code == 200


def test_openrouter_results_only_once_completed(newest: tuple[Simulator, httpx.Client]) -> None:
    sim, c = newest
    expired = sim.add_batch("openrouter", status="expired")["id"]
    r = c.get(f"/v1/batches/{expired}/results", params={"provider": "openrouter"})
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "batch results not available: batch status is expired"
