"""The simulator settles finished batches as Bifrost's batch accounting does (framework/jobaccounting @a8b191cd and
@1be5e91b, the logging plugin's /results path, handlers/logging.go @004baac5), so that an exporter reading costs is
proved against the gateway's real behaviour: ids anyone can compute, the sweeper's timing, which batches get a row,
unknown costs filled in later, mixed rows re-priced, echo rows, and the logs API behind the admin login. Every fact
is checked through real HTTP on loopback; the expected timings are computed here from Bifrost's formulas."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from exporter.simulator import (
    DEFAULT_PRICES,
    Accounting,
    Governance,
    ProviderSpec,
    Simulator,
    VirtualKey,
    demo_governance,
)

T0 = 1_700_000_000.0
NAMESPACE = uuid.UUID("90a2f576-5276-481f-a753-2c78ccf97607")
LOGIN = ("admin", "pw")
MINI = "gpt-4o-mini-2024-07-18"
FOUR_O = "gpt-4o-2024-08-06"
PROVIDERS = [
    ProviderSpec("openai", flavor="openai"),
    ProviderSpec("azure", style="legacy", flavor="azure"),
    ProviderSpec("anthropic", flavor="anthropic"),
    ProviderSpec("bedrock", flavor="bedrock"),
    ProviderSpec("gemini", flavor="gemini"),
    ProviderSpec("gigachat", flavor="gigachat"),
    ProviderSpec("openrouter", flavor="openrouter"),
]


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, accounting: Accounting | None = None, **kwargs: Any) -> Simulator:
    kwargs.setdefault("basic_auth", LOGIN)
    return Simulator(
        providers=PROVIDERS, lifecycle=False, clock=clock, accounting=accounting or Accounting(), **kwargs
    )


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    with make(clock) as s:
        yield s


@pytest.fixture
def admin(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, auth=LOGIN, timeout=10) as c:
        yield c


def uuid5(provider: str, batch_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{provider}:{batch_id}"))


def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) % 2**32
    return h


def next_check(batch_id: str, provider: str, attempts: int, tick: float) -> float:
    """sweeper.go reschedule: backoff by attempts, plus the deterministic jitter of the job id and attempts."""
    delay = 60.0
    if attempts >= 30:
        delay = 900.0
    elif attempts >= 10:
        delay = 300.0
    elif attempts >= 5:
        delay = 120.0
    cap = int(min(60.0, delay / 5))
    job_id = f"batch-job:{provider}:{batch_id}"
    return tick + delay + fnv32a(f"{job_id}:{attempts}".encode()) % (cap + 1)


def first_tick(at: float) -> float:
    """Sweeps run every minute from the simulator's start (T0)."""
    return T0 + 60 * math.ceil((at - T0) / 60)


def go_time(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def row(c: httpx.Client, provider: str, batch_id: str) -> httpx.Response:
    return c.get(f"/api/logs/{uuid5(provider, batch_id)}")


def advance(sim: Simulator, clock: FakeClock, to: float) -> None:
    clock.now = to
    sim.tick()


# ---- the settlement row: id, timing, shape ---------------------------------------------------------------------


def test_settlement_is_404_until_the_sweep_that_finds_the_batch_finished(
    sim: Simulator, admin: httpx.Client, clock: FakeClock
) -> None:
    """The job is checked a minute after creation; a batch still running is rescheduled (attempt 1: a minute plus
    jitter); the sweep at or after that time settles it, and the row's id is UUIDv5("<provider>:<batch_id>")."""
    b = sim.add_batch(
        "openai",
        status="in_progress",
        created_at=int(T0),
        request_counts={"total": 3, "completed": 2, "failed": 0},
    )
    bid = b["id"]
    advance(sim, clock, T0 + 59)
    assert row(admin, "openai", bid).status_code == 404
    advance(sim, clock, T0 + 60)  # first poll: still running
    job = sim.job("openai", bid)
    assert job is not None and job["poll_attempts"] == 1
    expected_check = next_check(bid, "openai", 1, T0 + 60)
    assert job["next_check_at"] == expected_check
    sim.set_status("openai", bid, "completed", at=int(T0 + 90))
    settle_at = first_tick(expected_check)
    advance(sim, clock, settle_at - 1)
    r = row(admin, "openai", bid)
    assert r.status_code == 404
    assert r.json() == {"is_bifrost_error": False, "status_code": 404, "error": {"message": "log not found"}}
    advance(sim, clock, settle_at)
    r = row(admin, "openai", bid)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["id"] == uuid5("openai", bid) == Simulator.settlement_id("openai", bid)
    assert got["timestamp"] == got["created_at"] == go_time(settle_at)
    assert got["object"] == "batch_results"
    assert got["status"] == "success"
    assert got["parent_request_id"] is None
    assert got["batch_debug"]["batch_id"] == bid
    assert got["batch_debug"]["status"] == "completed"
    assert got["batch_debug"]["endpoint"] == "/v1/chat/completions"
    assert sim.job("openai", bid)["accounting_status"] == "accounted"  # type: ignore[index]


def test_the_sweeper_backs_off_as_attempts_accumulate(sim: Simulator, clock: FakeClock) -> None:
    """Backoff: 1 min, 2 min from the 5th poll, 5 min from the 10th, 15 min from the 30th, each with jitter."""
    bid = sim.add_batch("openai", status="in_progress", created_at=int(T0))["id"]
    due = T0 + 60
    for attempts in range(1, 32):
        tick = first_tick(due)
        advance(sim, clock, tick)
        job = sim.job("openai", bid)
        assert job is not None and job["poll_attempts"] == attempts
        due = next_check(bid, "openai", attempts, tick)
        assert job["next_check_at"] == due, attempts
    assert due - first_tick(due - 900) >= 900 - 60  # the last gaps are a quarter of an hour


def test_a_sweep_settles_at_most_fifty_jobs(sim: Simulator, admin: httpx.Client, clock: FakeClock) -> None:
    ids = [sim.add_batch("openai", status="completed", created_at=int(T0) - 30)["id"] for _ in range(60)]
    advance(sim, clock, T0 + 60)
    settled = [bid for bid in ids if row(admin, "openai", bid).status_code == 200]
    assert len(settled) == 50
    advance(sim, clock, T0 + 120)
    assert all(row(admin, "openai", bid).status_code == 200 for bid in ids)


@pytest.mark.parametrize(
    ("provider", "status", "counts", "settles"),
    [
        ("openai", "completed", {"total": 10, "completed": 9, "failed": 1}, True),
        ("anthropic", "ended", None, True),
        ("openai", "expired", {"total": 10, "completed": 6, "failed": 0}, True),
        ("openai", "expired", {"total": 10, "completed": 0, "failed": 0}, False),
        ("openai", "cancelled", {"total": 10, "completed": 5, "failed": 0}, True),
        ("openai", "failed", {"total": 10, "completed": 2, "failed": 8}, False),  # no output file
        ("bedrock", "failed", {"total": 10, "completed": 2, "failed": 8}, True),  # the job kept its output
        ("gemini", "failed", {"total": 10, "completed": 2, "failed": 8}, False),
        ("azure", "completed", {"total": 10, "completed": 10, "failed": 0}, True),
        ("azure", "canceled", {"total": 10, "completed": 5, "failed": 0}, False),  # not a Bifrost status
        ("gigachat", "completed", {"total": 10, "completed": 10, "failed": 0}, False),  # no usage extractor
        ("openrouter", "completed", {"total": 10, "completed": 10, "failed": 0}, False),
        ("openai", "in_progress", {"total": 10, "completed": 5, "failed": 0}, False),
        ("openai", "completed", {"total": 10, "completed": 0, "failed": 10}, False),  # nothing with usage
    ],
)
def test_which_batches_get_a_settlement_row(
    sim: Simulator,
    admin: httpx.Client,
    clock: FakeClock,
    provider: str,
    status: str,
    counts: dict[str, int] | None,
    settles: bool,
) -> None:
    b = sim.add_batch(provider, status=status, created_at=int(T0) - 600, request_counts=counts)
    advance(sim, clock, T0 + 6 * 3600)
    r = row(admin, provider, b["id"])
    assert r.status_code == (200 if settles else 404), r.text
    truth = sim.accounting_truth()
    if settles:
        assert r.json()["batch_debug"]["status"] == status
        assert truth.settlement(provider, b["id"]) is not None
    else:
        assert (provider, b["id"]) in truth.unsettled_finished or status == "in_progress"


def test_a_batch_gone_before_its_sweep_is_never_settled(
    sim: Simulator, admin: httpx.Client, clock: FakeClock
) -> None:
    bid = sim.add_batch("openai", status="completed", created_at=int(T0))["id"]
    sim.delete("openai", bid)
    advance(sim, clock, T0 + 3 * 3600)
    assert row(admin, "openai", bid).status_code == 404
    job = sim.job("openai", bid)
    assert job is not None and job["accounting_status"] == "pending" and job["poll_attempts"] > 10


def test_a_batch_created_outside_the_gateway_has_no_job_and_is_not_swept(
    sim: Simulator, admin: httpx.Client, clock: FakeClock
) -> None:
    bid = sim.add_batch("openai", status="completed", created_at=int(T0), external=True)["id"]
    advance(sim, clock, T0 + 3600)
    assert row(admin, "openai", bid).status_code == 404
    assert sim.job("openai", bid) is None


def test_cost_tokens_and_breakdown_of_a_priced_batch(
    sim: Simulator, admin: httpx.Client, clock: FakeClock
) -> None:
    b = sim.add_batch(
        "openai",
        status="completed",
        request_counts={"total": 40, "completed": 37, "failed": 3},
        models=(MINI,),
    )
    advance(sim, clock, T0 + 600)
    got = row(admin, "openai", b["id"]).json()
    usage = got["token_usage"]
    rate_in, rate_out = DEFAULT_PRICES[MINI]
    assert got["model"] == MINI
    assert got["cost"] == pytest.approx(
        usage["prompt_tokens"] * rate_in + usage["completion_tokens"] * rate_out
    )
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    breakdown = got["batch_debug"]["accounting"]["model_breakdowns"][MINI]
    assert breakdown["request_count"] == 37
    assert breakdown["usage"] == usage
    assert breakdown["cost"] == got["cost"]
    assert "incomplete" not in got["batch_debug"]["accounting"]
    assert got["batch_debug"]["request_counts"] == {"total": 40, "completed": 37, "failed": 3}


# ---- unknown costs, mixed rows, re-pricing ---------------------------------------------------------------------


def test_an_unpriced_model_leaves_the_cost_out_and_a_late_price_fills_it_in(clock: FakeClock) -> None:
    accounting = Accounting(late_prices={"model-x": (1800.0, (1e-6, 2e-6))})
    with make(clock, accounting) as s, httpx.Client(base_url=s.url, auth=LOGIN) as c:
        b = s.add_batch("openai", status="completed", models=("model-x",))
        advance(s, clock, T0 + 600)
        got = row(c, "openai", b["id"]).json()
        assert "cost" not in got  # logstore's `cost,omitempty`: an unknown cost is absent, not 0
        assert got["model"] == "model-x"
        assert got["batch_debug"]["accounting"]["incomplete"] is True
        assert got["token_usage"]["total_tokens"] > 0
        assert s.accounting_truth().unpriced("openai")[0].batch_id == b["id"]
        advance(s, clock, T0 + 1800)
        filled = row(c, "openai", b["id"]).json()
        usage = filled["token_usage"]
        assert filled["cost"] == pytest.approx(
            usage["prompt_tokens"] * 1e-6 + usage["completion_tokens"] * 2e-6
        )
        assert filled["timestamp"] == got["timestamp"]  # the same row, priced in place
        assert filled["batch_debug"]["accounting"]["incomplete"] is True  # never cleared by a re-pricing
        assert s.job("openai", b["id"])["accounting_status"] == "unpriceable"  # type: ignore[index]


def test_null_cost_style_for_gateways_that_write_null(clock: FakeClock) -> None:
    with make(clock, Accounting(null_cost="null")) as s, httpx.Client(base_url=s.url, auth=LOGIN) as c:
        b = s.add_batch("openai", status="completed", models=("model-x",))
        advance(s, clock, T0 + 600)
        got = row(c, "openai", b["id"]).json()
        assert "cost" in got and got["cost"] is None


def test_a_partly_priced_batch_has_no_cost_and_priced_breakdowns(clock: FakeClock) -> None:
    for incomplete_cost in ("null", "number"):
        with (
            make(clock, Accounting(incomplete_cost=incomplete_cost)) as s,
            httpx.Client(base_url=s.url, auth=LOGIN) as c,
        ):
            b = s.add_batch("openai", status="completed", created_at=int(clock.now), models=(MINI, "model-x"))
            advance(s, clock, clock.now + 600)
            got = row(c, "openai", b["id"]).json()
            breakdowns = got["batch_debug"]["accounting"]["model_breakdowns"]
            assert got["model"] == "mixed"
            assert "cost" in breakdowns[MINI] and "cost" not in breakdowns["model-x"]
            assert got["batch_debug"]["accounting"]["incomplete"] is True
            if incomplete_cost == "null":
                assert "cost" not in got
            else:
                assert got["cost"] == breakdowns[MINI]["cost"]  # the known part only, flagged incomplete
            s.set_price("model-x", 1e-6, 1e-6)
            assert s.recalculate() == (1 if incomplete_cost == "null" else 0)


def test_a_mixed_row_is_re_priced_when_a_rate_changes(clock: FakeClock) -> None:
    new_rate = (2.5e-6, 10e-6)
    with (
        make(clock, Accounting(reprices=((3600.0, FOUR_O, new_rate),))) as s,
        httpx.Client(base_url=s.url, auth=LOGIN) as c,
    ):
        b = s.add_batch("openai", status="completed", models=(MINI, FOUR_O))
        advance(s, clock, T0 + 600)
        before = row(c, "openai", b["id"]).json()
        parts = before["batch_debug"]["accounting"]["model_breakdowns"]
        assert before["model"] == "mixed"
        assert set(parts) == {MINI, FOUR_O}
        assert before["cost"] == pytest.approx(parts[MINI]["cost"] + parts[FOUR_O]["cost"])
        assert before["token_usage"]["prompt_tokens"] == sum(
            p["usage"]["prompt_tokens"] for p in parts.values()
        )
        assert s.accounting_truth().cost("openai", "mixed") == pytest.approx(before["cost"])
        advance(s, clock, T0 + 3600)
        after = row(c, "openai", b["id"]).json()
        four = after["batch_debug"]["accounting"]["model_breakdowns"][FOUR_O]
        expected_four = (
            four["usage"]["prompt_tokens"] * new_rate[0] + four["usage"]["completion_tokens"] * new_rate[1]
        )
        assert four["cost"] == pytest.approx(expected_four)
        assert after["cost"] == pytest.approx(parts[MINI]["cost"] + expected_four)
        assert after["cost"] > before["cost"]
        assert s.accounting_truth().cost("openai", "mixed") == pytest.approx(after["cost"])


# ---- /results: inline settlement and echo rows -----------------------------------------------------------------


def test_each_results_call_leaves_an_echo_row_and_the_first_one_settles_inline(
    sim: Simulator, admin: httpx.Client, clock: FakeClock
) -> None:
    b = sim.add_batch("anthropic", status="ended", created_at=int(T0))
    bid = b["id"]
    first = admin.get(f"/v1/batches/{bid}/results", params={"provider": "anthropic"})
    assert first.status_code == 200
    results = first.json()["results"]
    assert results[0]["result"]["type"] == "succeeded"
    settled = row(admin, "anthropic", bid).json()  # settled by the call, before any sweep
    assert (
        settled["batch_debug"]["status"] == "completed"
    )  # the inline path labels it so, whatever Anthropic said
    assert settled["token_usage"]["prompt_tokens"] == sum(
        r["result"]["message"]["usage"]["input_tokens"] for r in results if r["result"]["type"] == "succeeded"
    )
    clock.now += 5
    admin.get(f"/v1/batches/{bid}/results", params={"provider": "anthropic"})
    truth = sim.accounting_truth()
    assert len(truth.echo_ids) == 2 and len(set(truth.echo_ids)) == 2
    assert uuid5("anthropic", bid) not in truth.echo_ids
    assert settled["parent_request_id"] == truth.echo_ids[0]
    for echo_id in truth.echo_ids:
        echo = admin.get(f"/api/logs/{echo_id}").json()
        assert echo["object"] == "batch_results"
        assert "cost" not in echo
        assert echo["batch_debug"]["accounting"]["echo"] is True
        assert echo["batch_debug"]["accounting"]["cost"] == settled["cost"]
    advance(sim, clock, T0 + 3600)
    assert row(admin, "anthropic", bid).json() == settled  # the sweeper never writes a second row


def test_results_of_a_running_batch_are_the_providers_refusal(sim: Simulator, admin: httpx.Client) -> None:
    bid = sim.add_batch("openai", status="in_progress")["id"]
    r = admin.get(f"/v1/batches/{bid}/results", params={"provider": "openai"})
    assert r.status_code == 400
    assert r.json()["is_bifrost_error"] is False
    assert row(admin, "openai", bid).status_code == 404


def test_attribution_from_the_job_row_or_from_the_request_that_settled(clock: FakeClock) -> None:
    gov = Governance(
        keys=(
            VirtualKey(id="vk-a", value="sk-bf-a", name="tenant-a", team_id="team-a", customer_id="cust-a"),
            VirtualKey(id="vk-b", value="sk-bf-b", name="tenant-b", team_id="team-b"),
        )
    )
    with make(clock, governance=gov) as s, httpx.Client(base_url=s.url, auth=LOGIN) as c:
        owned = s.add_batch("openai", status="completed", owner="vk-a")["id"]
        external = s.add_batch("openai", status="completed", external=True)["id"]
        assert (
            c.get(
                f"/v1/batches/{external}/results",
                params={"provider": "openai"},
                headers={"x-bf-vk": "sk-bf-b"},
            ).status_code
            == 200
        )
        advance(s, clock, T0 + 600)
        a = row(c, "openai", owned).json()
        assert (a["virtual_key_id"], a["virtual_key_name"], a["team_id"], a["customer_id"]) == (
            "vk-a",
            "tenant-a",
            "team-a",
            "cust-a",
        )
        b = row(c, "openai", external).json()
        assert (b["virtual_key_id"], b["team_id"]) == ("vk-b", "team-b")


# ---- the logs API ----------------------------------------------------------------------------------------------


def test_the_logs_api_needs_the_admin_login_not_a_virtual_key(clock: FakeClock) -> None:
    with make(clock, governance=demo_governance(), admin_token="session-123") as s:
        key = s.virtual_keys["tenant-a"]
        with httpx.Client(base_url=s.url) as c:
            assert c.get("/api/logs").status_code == 401
            assert c.get("/api/logs", headers={"x-bf-vk": key}).status_code == 401
            assert c.get("/api/logs", headers={"authorization": f"Bearer {key}"}).status_code == 401
            assert c.get("/api/logs", headers={"authorization": "Bearer session-123"}).status_code == 200
            assert c.get("/api/logs", auth=LOGIN).status_code == 200
            assert c.get("/api/logs", auth=("admin", "nope")).json() == {
                "is_bifrost_error": False,
                "status_code": 401,
                "error": {"message": "Unauthorized"},
            }


def test_the_logs_api_is_open_when_the_gateways_auth_is_off(clock: FakeClock) -> None:
    with make(clock, basic_auth=None) as s, httpx.Client(base_url=s.url) as c:
        assert c.get("/api/logs").status_code == 200


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "0"}, "limit must be greater than 0"),
        ({"limit": "1001"}, "limit cannot exceed 1000"),
        ({"offset": "-1"}, "offset cannot be negative"),
    ],
)
def test_the_logs_api_refuses_bad_paging(admin: httpx.Client, params: dict[str, str], message: str) -> None:
    r = admin.get("/api/logs", params=params)
    assert r.status_code == 400
    assert r.json() == {"is_bifrost_error": False, "status_code": 400, "error": {"message": message}}


def test_the_exporters_query_pages_every_settlement_in_time_order(
    sim: Simulator, admin: httpx.Client, clock: FakeClock
) -> None:
    """GET /api/logs?objects=batch_results&providers=P&start_time=…&sort_by=timestamp&order=asc&limit=…&offset=…"""
    ids = []
    for _ in range(7):
        ids.append(sim.add_batch("openai", status="completed", created_at=int(clock.now))["id"])
        sim.add_batch("anthropic", status="ended", created_at=int(clock.now))
        advance(sim, clock, clock.now + 120)
    query = {
        "objects": "batch_results",
        "providers": "openai",
        "start_time": go_time(T0),
        "sort_by": "timestamp",
        "order": "asc",
        "limit": "3",
    }
    seen: list[dict[str, Any]] = []
    for offset in (0, 3, 6, 9):
        body = admin.get("/api/logs", params={**query, "offset": str(offset)}).json()
        assert body["pagination"] == {
            "limit": 3,
            "offset": offset,
            "sort_by": "timestamp",
            "order": "asc",
            "total_count": 7,
        }
        assert body["has_logs"] is True
        seen += body["logs"]
    assert [r["id"] for r in seen] == [uuid5("openai", bid) for bid in ids]
    assert [r["timestamp"] for r in seen] == sorted(r["timestamp"] for r in seen)
    later = admin.get("/api/logs", params={**query, "start_time": seen[4]["timestamp"]}).json()
    assert later["pagination"]["total_count"] == 3
    ignored = admin.get("/api/logs", params={**query, "start_time": "yesterday"}).json()
    assert ignored["pagination"]["total_count"] == 7  # Go's handler drops a start_time it cannot parse
    default = admin.get("/api/logs", params={"limit": "abc"}).json()
    assert default["pagination"]["limit"] == 50 and default["pagination"]["order"] == "desc"
    assert default["pagination"]["total_count"] == 14
    assert admin.get("/api/logs", params={"objects": "chat.completion"}).json()["logs"] == []


def test_without_accounting_there_is_no_logs_api(clock: FakeClock) -> None:
    with Simulator(providers=PROVIDERS, lifecycle=False, clock=clock) as s, httpx.Client(base_url=s.url) as c:
        assert c.get("/api/logs").status_code == 404
        with pytest.raises(ValueError, match="accounting"):
            s.accounting_truth()


# ---- ground truth ------------------------------------------------------------------------------------------------


def test_ground_truth_is_what_the_logs_api_serves_and_is_deterministic(clock: FakeClock) -> None:
    """With lifecycles moving, governance on and the default prices: every settlement read back through the logs
    API adds up to the truth accessor, by provider and model, exactly for tokens."""
    runs = []
    for _ in range(2):
        clock.now = T0
        with Simulator(
            seed=5,
            clock=clock,
            governance=demo_governance(mandatory=False),
            accounting=Accounting(),
            basic_auth=LOGIN,
        ) as s:
            advance(s, clock, T0 + 1800)
            truth = s.accounting_truth()
            rows: list[dict[str, Any]] = []
            with httpx.Client(base_url=s.url, auth=LOGIN) as c:
                offset = 0
                while True:
                    page = c.get(
                        "/api/logs",
                        params={
                            "objects": "batch_results",
                            "sort_by": "timestamp",
                            "order": "asc",
                            "limit": "1000",
                            "offset": str(offset),
                        },
                    ).json()
                    rows += page["logs"]
                    offset += len(page["logs"])
                    if offset >= page["pagination"]["total_count"]:
                        break
            runs.append(truth)
        settlements = {
            r["id"]: r for r in rows if not r.get("batch_debug", {}).get("accounting", {}).get("echo")
        }
        assert set(settlements) == {x.log_id for x in truth.settlements}
        assert all(settlements[x.log_id]["id"] == uuid5(x.provider, x.batch_id) for x in truth.settlements)
        for provider in {x.provider for x in truth.settlements}:
            for model in {x.model for x in truth.settlements if x.provider == provider}:
                mine = [r for r in settlements.values() if r["provider"] == provider and r["model"] == model]
                assert sum(r.get("cost") or 0.0 for r in mine) == pytest.approx(truth.cost(provider, model))
                assert sum(r["token_usage"]["prompt_tokens"] for r in mine) == truth.tokens(
                    provider, model, "prompt"
                )
                assert sum(r["token_usage"]["completion_tokens"] for r in mine) == truth.tokens(
                    provider, model, "completion"
                )
        assert truth.cost() > 0 and len(truth.settlements) > 50
        assert {x.virtual_key_id for x in truth.settlements} == {"vk-tenant-a", "vk-tenant-b", None}
    assert runs[0] == runs[1]


def test_control_api_serves_the_truth_and_prices(
    sim: Simulator, admin: httpx.Client, clock: FakeClock
) -> None:
    b = sim.add_batch("openai", status="completed", models=("model-x",))
    advance(sim, clock, T0 + 600)
    truth = admin.get("/_sim/accounting").json()
    assert [s["batch_id"] for s in truth["settlements"]] == [b["id"]]
    assert truth["settlements"][0]["cost"] is None
    assert (
        admin.post(
            "/_sim/accounting/price", json={"model": "model-x", "input": 1e-6, "output": 1e-6}
        ).status_code
        == 200
    )
    assert admin.post("/_sim/accounting/recalculate", json={}).json() == {"updated": 1}
    assert admin.get("/_sim/accounting").json()["settlements"][0]["cost"] > 0
    assert admin.get("/_sim/state").json()["accounting"] == {"settlements": 1, "unpriced": 0, "echo_rows": 0}
