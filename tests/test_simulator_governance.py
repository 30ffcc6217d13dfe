"""The simulator's governance is as strict as Bifrost's (plugins/governance/providerjobs.go @428c1333, its test
providerjobs_test.go @11191bff, and the grants-era Evaluate): one virtual key sees its own batches and the unowned
ones, pages are narrowed after they were cut (short or empty with has_more true, cursors untouched), another key's
batch is a 404, keys can be mandatory, and without a config store a keyed batch request is a 403. Everything through
real HTTP on loopback."""

from __future__ import annotations

import dataclasses
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.simulator import Governance, ProviderSpec, Simulator, VirtualKey, demo_governance, write_key_dir
from exporter.simulator.core import Endpoint

T0 = 1_700_000_000.0
NO_RAW = {"x-bf-send-back-raw-response": "false"}
A = VirtualKey(id="vk-a", value="sk-bf-tenant-a", name="tenant-a", team_id="team-a")
B = VirtualKey(id="vk-b", value="sk-bf-tenant-b", name="tenant-b", team_id="team-b")
OPENAI = ProviderSpec("openai", flavor="openai")


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make(gov: Governance, providers: list[ProviderSpec] | None = None, **kwargs: Any) -> Simulator:
    return Simulator(
        providers=providers or [OPENAI], governance=gov, lifecycle=False, clock=FakeClock(), **kwargs
    )


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with make(Governance(keys=(A, B))) as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10) as c:
        yield c


def vk(key: VirtualKey | None) -> dict[str, str]:
    return {**NO_RAW, **({} if key is None else {"x-bf-vk": key.value})}


def tenants_of_twelve(sim: Simulator) -> dict[str | None, list[str]]:
    """The issue's example: 12 batches, 4 per tenant and 4 unowned, interleaved newest first."""
    owners: list[str | None] = ["vk-a", "vk-b", None] * 4
    out: dict[str | None, list[str]] = {"vk-a": [], "vk-b": [], None: []}
    for i, owner in enumerate(owners):
        bid = sim.add_batch("openai", created_at=int(T0) - i, owner=owner)["id"]
        out[owner].append(bid)
    return out


def walk(client: httpx.Client, key: VirtualKey | None, limit: int) -> list[dict[str, Any]]:
    pages = []
    params: dict[str, Any] = {"provider": "openai", "limit": limit}
    while True:
        r = client.get("/v1/batches", params=params, headers=vk(key))
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        pages.append(body)
        if not body.get("has_more"):
            return pages
        params["after"] = body["next_cursor"]


def ids(pages: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for page in pages for item in page["data"]]


# ---- lists: filterProviderJobList -------------------------------------------------------------------------


def test_one_key_sees_its_own_and_the_unowned_batches_and_pages_are_cut_before_narrowing(
    sim: Simulator, client: httpx.Client
) -> None:
    """The issue's example: one tenant's key shows 8 of 12 batches, and nothing in the answer says it is partial."""
    batches = tenants_of_twelve(sim)
    keyless = walk(client, None, 5)
    tenant_a = walk(client, A, 5)
    tenant_b = walk(client, B, 5)
    everything = sorted(batches["vk-a"] + batches["vk-b"] + batches[None])
    assert sorted(ids(keyless)) == everything
    assert sorted(ids(tenant_a)) == sorted(batches["vk-a"] + batches[None])
    assert sorted(ids(tenant_b)) == sorted(batches["vk-b"] + batches[None])
    assert sorted(set(ids(tenant_a)) | set(ids(tenant_b))) == everything
    # The same pages as without a key, each cut to 5 upstream and then narrowed: short, with has_more and the
    # cursors and last_id of the provider.
    assert len(tenant_a) == len(keyless) == 3
    for narrowed, whole in zip(tenant_a, keyless, strict=True):
        assert narrowed.get("has_more") == whole.get("has_more")
        assert narrowed.get("next_cursor") == whole.get("next_cursor")
        assert narrowed.get("last_id") == whole.get("last_id")
        assert [i["id"] for i in narrowed["data"]] == [
            i["id"] for i in whole["data"] if i["id"] not in batches["vk-b"]
        ]
    assert [len(p["data"]) for p in tenant_a] == [3, 4, 1]  # a b - a b | - a b - a | b -
    assert sim.visible_batches("openai", "vk-a") == [
        b for b in sim.visible_batches("openai", None) if b not in batches["vk-b"]
    ]


def test_a_page_of_only_foreign_batches_comes_back_empty_with_has_more(
    sim: Simulator, client: httpx.Client
) -> None:
    foreign = [sim.add_batch("openai", created_at=int(T0) - i, owner="vk-b")["id"] for i in range(3)]
    mine = sim.add_batch("openai", created_at=int(T0) - 10, owner="vk-a")["id"]
    first = client.get("/v1/batches", params={"provider": "openai", "limit": 3}, headers=vk(A)).json()
    assert first["data"] == []
    assert first["has_more"] is True
    assert first["last_id"] == foreign[-1]  # the provider's last id, of a batch this key may not see
    second = client.get(
        "/v1/batches", params={"provider": "openai", "limit": 3, "after": first["next_cursor"]}, headers=vk(A)
    ).json()
    assert [i["id"] for i in second["data"]] == [mine]
    assert "has_more" not in second


def test_a_request_without_a_key_is_not_narrowed_where_keys_are_optional(
    sim: Simulator, client: httpx.Client
) -> None:
    batches = tenants_of_twelve(sim)
    assert len(ids(walk(client, None, 100))) == sum(len(v) for v in batches.values())


def test_narrowing_drops_the_raw_responses_that_would_show_the_whole_page(
    sim: Simulator, client: httpx.Client
) -> None:
    """OpenAI puts the provider's whole raw page on every item; once an item is removed, no raw response stays."""
    sim.add_batch("openai", created_at=int(T0), owner="vk-a")
    sim.add_batch("openai", created_at=int(T0) - 1, owner="vk-b")
    echo = {"x-bf-vk": A.value, "x-bf-send-back-raw-response": "true"}
    narrowed = client.get("/v1/batches", params={"provider": "openai"}, headers=echo).json()
    assert len(narrowed["data"]) == 1
    assert "raw_response" not in narrowed["data"][0]["extra_fields"]
    assert "raw_response" not in narrowed["extra_fields"]
    sim.set_owner("openai", narrowed["data"][0]["id"], None)
    whole = client.get(
        "/v1/batches", params={"provider": "openai"}, headers={**echo, "x-bf-vk": B.value}
    ).json()
    assert len(whole["data"]) == 2  # nothing removed: the raw responses stay
    assert all("raw_response" in item["extra_fields"] for item in whole["data"])


# ---- one batch: enforceProviderJobOwnership ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("POST", "/cancel"), ("GET", "/results")],
    ids=["retrieve", "cancel", "results"],
)
def test_another_keys_batch_is_not_found_and_is_not_confirmed_to_exist(
    sim: Simulator, client: httpx.Client, method: str, suffix: str
) -> None:
    status = "completed" if suffix == "/results" else "in_progress"
    theirs = sim.add_batch("openai", status=status, owner="vk-b")["id"]
    r = client.request(method, f"/v1/batches/{theirs}{suffix}", params={"provider": "openai"}, headers=vk(A))
    assert r.status_code == 404
    assert r.json() == {
        "type": "access_blocked",
        "is_bifrost_error": False,
        "status_code": 404,
        "error": {"message": f"batch '{theirs}' not found"},
    }
    endpoint: Endpoint = "retrieve" if suffix == "" else "cancel" if suffix == "/cancel" else "results"
    assert sim.requests("openai", endpoint) == 1  # the gateway counted it; the provider was never asked
    assert sim.batch("openai", theirs)["status"] == status  # a refused cancel changes nothing
    ok = client.request(method, f"/v1/batches/{theirs}{suffix}", params={"provider": "openai"}, headers=vk(B))
    assert ok.status_code == 200, ok.text


def test_own_unowned_external_and_unknown_batches(sim: Simulator, client: httpx.Client) -> None:
    own = sim.add_batch("openai", owner="vk-a")["id"]
    unowned = sim.add_batch("openai", owner=None)["id"]
    external = sim.add_batch("openai", external=True)["id"]
    for bid in (own, unowned, external):
        r = client.get(f"/v1/batches/{bid}", params={"provider": "openai"}, headers=vk(A))
        assert r.status_code == 200, bid
    # A batch with no job row at all is the provider's business: the provider's own 404, not governance's.
    gone = client.get("/v1/batches/batch_nope", params={"provider": "openai"}, headers=vk(A))
    assert gone.status_code == 404
    assert gone.json()["error"]["type"] == "invalid_request_error"
    assert "type" not in gone.json()


def test_a_request_without_a_key_reaches_every_batch(sim: Simulator, client: httpx.Client) -> None:
    theirs = sim.add_batch("openai", owner="vk-b")["id"]
    assert client.get(f"/v1/batches/{theirs}", params={"provider": "openai"}).status_code == 200


# ---- who the request is: Evaluate ---------------------------------------------------------------------------


def test_mandatory_keys_refuse_a_request_without_one() -> None:
    with make(Governance(keys=(A,), mandatory=True)) as s, httpx.Client(base_url=s.url) as c:
        r = c.get("/v1/batches", params={"provider": "openai"})
        assert r.status_code == 401
        assert r.json() == {
            "type": "virtual_key_required",
            "is_bifrost_error": False,
            "status_code": 401,
            "error": {"message": "virtual key is required. Provide a virtual key via the x-bf-vk header."},
        }
        # An x-bf-vk without the sk-bf- prefix is not read as a key at all.
        assert (
            c.get("/v1/batches", params={"provider": "openai"}, headers={"x-bf-vk": "tenant-a"}).status_code
            == 401
        )
        assert c.get("/v1/batches", params={"provider": "openai"}, headers=vk(A)).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer sk-bf-tenant-a"},
        {"x-api-key": "sk-bf-tenant-a"},
        {"x-goog-api-key": "sk-bf-tenant-a"},
        {"x-bf-vk": "sk-bf-tenant-a"},
    ],
    ids=["bearer", "x-api-key", "x-goog-api-key", "x-bf-vk"],
)
def test_the_headers_a_key_travels_in(headers: dict[str, str]) -> None:
    with make(Governance(keys=(A, B), mandatory=True)) as s, httpx.Client(base_url=s.url) as c:
        s.add_batch("openai", owner="vk-b")
        r = c.get("/v1/batches", params={"provider": "openai"}, headers=headers)
        assert r.status_code == 200
        assert r.json()["data"] == []  # read as tenant a's key: tenant b's batch is narrowed away


def test_api_key_header_is_not_where_governance_looks() -> None:
    with make(Governance(keys=(A,), mandatory=True)) as s, httpx.Client(base_url=s.url) as c:
        r = c.get("/v1/batches", params={"provider": "openai"}, headers={"api-key": A.value})
        assert r.status_code == 401
        assert r.json()["type"] == "virtual_key_required"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("access_not_found", "access not found. The provided credential does not exist or has been revoked."),
        (
            "virtual_key_not_found",
            "virtual key not found. The provided virtual key does not exist or has been revoked.",
        ),
    ],
)
def test_an_unknown_key_is_a_401(kind: Any, message: str) -> None:
    with make(Governance(keys=(A,), unknown_key_type=kind)) as s, httpx.Client(base_url=s.url) as c:
        r = c.get("/v1/batches", params={"provider": "openai"}, headers={"x-bf-vk": "sk-bf-revoked"})
        assert r.status_code == 401
        assert r.json() == {
            "type": kind,
            "is_bifrost_error": False,
            "status_code": 401,
            "error": {"message": message},
        }


def test_an_inactive_key_is_a_403() -> None:
    inactive = dataclasses.replace(A, active=False)
    with make(Governance(keys=(inactive,))) as s, httpx.Client(base_url=s.url) as c:
        r = c.get("/v1/batches", params={"provider": "openai"}, headers=vk(inactive))
        assert r.status_code == 403
        assert r.json()["type"] == "access_blocked"


def test_without_a_config_store_every_keyed_batch_request_is_a_403() -> None:
    with make(Governance(keys=(A,), config_store=False)) as s, httpx.Client(base_url=s.url) as c:
        bid = s.add_batch("openai", owner=None)["id"]
        expected = {
            "type": "access_blocked",
            "is_bifrost_error": False,
            "status_code": 403,
            "error": {"message": "batch access cannot be verified for virtual keys without a config store"},
        }
        listed = c.get("/v1/batches", params={"provider": "openai"}, headers=vk(A))
        assert (listed.status_code, listed.json()) == (403, expected)
        got = c.get(f"/v1/batches/{bid}", params={"provider": "openai"}, headers=vk(A))
        assert (got.status_code, got.json()) == (403, expected)
        assert c.get("/v1/batches", params={"provider": "openai"}).status_code == 200  # no key: unrestricted


def test_admin_login_and_key_together() -> None:
    """With the gateway's auth on, Authorization carries the login, so the key goes in x-bf-vk."""
    with make(Governance(keys=(A,), mandatory=True), basic_auth=("admin", "pw")) as s:
        with httpx.Client(base_url=s.url, auth=("admin", "pw")) as c:
            assert c.get("/v1/batches", params={"provider": "openai"}, headers=vk(A)).status_code == 200
            assert (
                c.get("/v1/batches", params={"provider": "openai"}).json()["type"] == "virtual_key_required"
            )
        with httpx.Client(base_url=s.url) as c:
            r = c.get("/v1/batches", params={"provider": "openai"}, headers=vk(A))
            assert r.status_code == 401
            assert "type" not in r.json()  # the login refused first, with the middleware's bare Unauthorized


# ---- owners, switches, the demo ------------------------------------------------------------------------------


def test_owners_are_drawn_from_the_seed_and_weights() -> None:
    gov = Governance(keys=(A, B), owner_weights=(1.0, 0.0, 0.0))
    with Simulator(providers=[OPENAI], governance=gov, seed=3, clock=FakeClock()) as s:
        owners = {s.owner("openai", b["id"]) for b in s.batches("openai")}
    assert owners == {"vk-a"}
    runs = []
    for _ in range(2):
        with Simulator(
            providers=[OPENAI], governance=Governance(keys=(A, B)), seed=0, clock=FakeClock()
        ) as s:
            runs.append(s.state()["providers"]["openai"]["owners"])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {"vk-a", "vk-b", "none"}


def test_configuration_errors_are_refused() -> None:
    with pytest.raises(ValueError, match="exclusive"):
        Simulator(governance=Governance(keys=(A,)), virtual_key="sk-bf-x", lifecycle=False)
    with pytest.raises(ValueError, match="sk-bf-"):
        VirtualKey(id="x", value="tenant-a")
    with pytest.raises(ValueError, match="unique"):
        Governance(keys=(A, A))
    with make(Governance(keys=(A,))) as s:
        with pytest.raises(KeyError):
            s.add_batch("openai", owner="vk-nobody")
        with pytest.raises(ValueError, match="no owner"):
            s.add_batch("openai", owner="vk-a", external=True)
    with (
        Simulator(providers=[OPENAI], lifecycle=False) as plain,
        pytest.raises(ValueError, match="governance"),
    ):
        plain.add_batch("openai", owner="vk-a")


def test_control_api_sets_owners_and_shows_keys(sim: Simulator, client: httpx.Client) -> None:
    created = client.post("/_sim/batches", json={"provider": "openai", "owner": "vk-b"}).json()
    assert (
        client.get(f"/v1/batches/{created['id']}", params={"provider": "openai"}, headers=vk(A)).status_code
        == 404
    )
    assert (
        client.post(
            "/_sim/owner", json={"provider": "openai", "batch_id": created["id"], "owner": "vk-a"}
        ).status_code
        == 200
    )
    assert (
        client.get(f"/v1/batches/{created['id']}", params={"provider": "openai"}, headers=vk(A)).status_code
        == 200
    )
    keys = client.get("/_sim/governance").json()["keys"]
    assert [(k["name"], k["value"]) for k in keys] == [("tenant-a", A.value), ("tenant-b", B.value)]
    assert client.get("/_sim/state").json()["providers"]["openai"]["owners"] == {"vk-a": 1}


def test_write_key_dir_writes_one_private_file_per_tenant(tmp_path: Path) -> None:
    paths = write_key_dir(demo_governance().keys, tmp_path / "keys")
    assert sorted(p.name for p in paths) == ["tenant-a", "tenant-b"]
    for path, key in zip(paths, demo_governance().keys, strict=True):
        assert path.read_text() == key.value + "\n"
        assert path.stat().st_mode & 0o777 == 0o600


def test_cli_governance_demo_with_a_key_directory(tmp_path: Path) -> None:
    """`python -m exporter.simulator --governance --key-dir DIR`: two tenants, mandatory keys, the keys on disk for
    the exporter's virtual_key_dir; one key sees one tenant, the union of the two sees every batch."""
    key_dir = tmp_path / "keys"
    cmd = [
        sys.executable,
        "-m",
        "exporter.simulator",
        "--port",
        "0",
        "--no-lifecycle",
        "--governance",
        "--key-dir",
        str(key_dir),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        url = None
        deadline = time.monotonic() + 30
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while url is None and time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                line = proc.stdout.readline()
                if not line:
                    break
                if "listening on" in line:
                    url = line.rsplit(" ", 1)[1].strip()
        assert url is not None, proc.stderr.read() if proc.stderr else ""
        keys = {p.name: p.read_text().strip() for p in sorted(key_dir.iterdir())}
        assert set(keys) == {"tenant-a", "tenant-b"}
        with httpx.Client(base_url=url, timeout=10) as c:
            assert c.get("/v1/batches", params={"provider": "openai"}).status_code == 401
            seen: dict[str, set[str]] = {}
            for name, value in keys.items():
                params: dict[str, Any] = {"provider": "anthropic"}
                body = c.get("/v1/batches", params=params, headers={"x-bf-vk": value}).json()
                seen[name] = {item["id"] for item in body["data"]}
            state = c.get("/_sim/state").json()["providers"]["anthropic"]
        assert seen["tenant-a"] != seen["tenant-b"]
        assert len(seen["tenant-a"] | seen["tenant-b"]) == min(state["batches"], 20)  # anthropic's first page
    finally:
        proc.terminate()
        proc.wait(timeout=10)
