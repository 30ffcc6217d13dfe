"""Bifrost's governance plugin as batch requests meet it: which virtual key a request presents, whether the gateway
accepts it, and which batches that key may see.

Read in maximhq/bifrost: `plugins/governance/providerjobs.go` (@428c1333, the newest of the indexed versions: it adds
batch delete, the list refusal without a config store, and fails a list whose ownership lookup fails), its test
`providerjobs_test.go` (@11191bff), `main.go` of the grants era (Evaluate/decide: the refusal types and statuses) and
`parseVirtualKeyFromHTTPRequest` (which headers carry a key). What a request carrying a virtual key gets:

- no key while `is_vk_mandatory` is on: 401 `virtual_key_required`;
- a key the gateway does not know: 401 `access_not_found` (older gateways: `virtual_key_not_found`);
- an inactive key: 403 `access_blocked`;
- a key whose provider configs do not name the request's provider (resolver.go `isProviderAllowed`; lists are not
  exempt): 403 `provider_blocked`, "Provider 'X' is not allowed for this virtual key";
- a key whose budget is spent (resolver.go, `checkBudgetHierarchy`): 402 `budget_exceeded`;
- without a config store, every batch request (a list included): 403 `access_blocked`;
- a retrieve, cancel, results or delete of a batch whose job row names another key: 404 `access_blocked`,
  "batch 'X' not found", before the provider is asked;
- a list: the provider's page with the other keys' batches removed, after the page was cut. `has_more`, `last_id`
  and `next_cursor` stay the provider's, so pages come back short or empty with `has_more` true; when an item was
  removed, the raw responses (which would show the whole page) are dropped from every item and from the list.

A request presenting no key is not narrowed at all. A batch with no job row (created outside the gateway) or a row
naming no key is everybody's.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .store import ProviderState
from .wire import Response, error_body, json_response

__all__ = [
    "Governance",
    "Governor",
    "UnknownKeyType",
    "VirtualKey",
    "demo_governance",
    "presented_key",
    "write_key_dir",
]

VIRTUAL_KEY_PREFIX = "sk-bf-"
UnknownKeyType = Literal["access_not_found", "virtual_key_not_found"]

_REQUIRED = "virtual key is required. Provide a virtual key via the x-bf-vk header."
_UNKNOWN = {
    "access_not_found": "access not found. The provided credential does not exist or has been revoked.",
    "virtual_key_not_found": (
        "virtual key not found. The provided virtual key does not exist or has been revoked."
    ),
}
_NO_CONFIG_STORE = "batch access cannot be verified for virtual keys without a config store"


@dataclass(frozen=True)
class VirtualKey:
    """One virtual key as the gateway's config holds it; `id` is what job rows and log rows record."""

    id: str
    value: str
    name: str = ""
    team_id: str | None = None
    customer_id: str | None = None
    active: bool = True
    # The providers its provider configs name (None: not scoped, every provider). Scoping a tenant's key to the
    # providers it uses is ordinary governance; the gateway then refuses that key everything on the others.
    providers: frozenset[str] | None = None
    # Its budget spent: the resolver's budget check (step 5, every request type but MCP tools and list-models)
    # answers 402 budget_exceeded until the budget resets.
    over_budget: bool = False

    def __post_init__(self) -> None:
        if not self.value.lower().startswith(VIRTUAL_KEY_PREFIX):
            raise ValueError(f"virtual key {self.id!r}: the gateway only reads values starting with sk-bf-")
        if not self.id:
            raise ValueError("a virtual key needs an id")


@dataclass(frozen=True)
class Governance:
    """The governance plugin's configuration. `owner_weights` draws the owner of each batch the simulator creates:
    one weight per key, then one for "no owner" (None: equal shares for every key and for no owner)."""

    keys: tuple[VirtualKey, ...]
    mandatory: bool = False
    config_store: bool = True
    unknown_key_type: UnknownKeyType = "access_not_found"
    owner_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        ids = [k.id for k in self.keys]
        values = [k.value for k in self.keys]
        if len(set(ids)) != len(ids) or len(set(values)) != len(values):
            raise ValueError("virtual key ids and values must be unique")
        if self.owner_weights is not None and len(self.owner_weights) != len(self.keys) + 1:
            raise ValueError("owner_weights needs one weight per key and one for unowned batches")

    def key(self, key_id: str) -> VirtualKey:
        for vk in self.keys:
            if vk.id == key_id:
                return vk
        raise KeyError(key_id)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The virtual key a request presents, in the gateway's order: `x-bf-vk`, `Authorization: Bearer`, `x-api-key`,
    `x-goog-api-key`, each only when it starts with sk-bf- (newer gateways ignore an x-bf-vk without the prefix)."""
    vk = headers.get("x-bf-vk", "")
    if vk and vk.lower().startswith(VIRTUAL_KEY_PREFIX):
        return vk
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        value = auth[7:].strip()
        if value.lower().startswith(VIRTUAL_KEY_PREFIX):
            return value
    for name in ("x-api-key", "x-goog-api-key"):
        value = headers.get(name, "")
        if value and value.lower().startswith(VIRTUAL_KEY_PREFIX):
            return value
    return None


def _refusal(status: int, err_type: str, message: str) -> Response:
    """A governance short-circuit: a BifrostError with a top-level type and status, not a Bifrost error."""
    return json_response(status, error_body(status, message, top_type=err_type))


@dataclass
class Governor:
    """Governance at run time: the configuration plus the draw of owners. Not thread-safe (world lock)."""

    config: Governance
    seed: int
    _rngs: dict[str, random.Random] = field(default_factory=dict)

    def on_insert(self, state: ProviderState, batch_id: str, new: bool) -> None:
        if new and batch_id not in state.owners:
            state.owners[batch_id] = self.draw_owner(state.spec.name)

    def draw_owner(self, provider: str) -> str | None:
        rng = self._rngs.get(provider)
        if rng is None:
            rng = self._rngs[provider] = random.Random(f"{self.seed}:{provider}:owner")
        choices: list[str | None] = [k.id for k in self.config.keys]
        choices.append(None)
        weights = self.config.owner_weights or tuple(1.0 for _ in choices)
        return rng.choices(choices, weights)[0]

    def authenticate(self, headers: Mapping[str, str]) -> tuple[VirtualKey | None, Response | None]:
        """Evaluate's identity steps: (the key, None) to go on, (None, refusal) to stop; (None, None) for a request
        that presented no key where keys are optional."""
        value = presented_key(headers)
        if value is None:
            if self.config.mandatory:
                return None, _refusal(401, "virtual_key_required", _REQUIRED)
            return None, None
        for vk in self.config.keys:
            if vk.value == value:
                if not vk.active:
                    return None, _refusal(403, "access_blocked", "virtual key is inactive")
                return vk, None
        kind = self.config.unknown_key_type
        return None, _refusal(401, kind, _UNKNOWN[kind])

    def check_batch_request(
        self, vk: VirtualKey | None, state: ProviderState | None, batch_id: str | None
    ) -> Response | None:
        """enforceProviderJobOwnership: a list (batch_id None) or a request addressing one batch."""
        if vk is None:
            return None
        if vk.providers is not None and state is not None and state.spec.name not in vk.providers:
            return _refusal(
                403, "provider_blocked", f"Provider '{state.spec.name}' is not allowed for this virtual key"
            )
        if vk.over_budget:
            return _refusal(402, "budget_exceeded", "Budget exceeded: virtual key budget exceeded")
        if not self.config.config_store:
            return _refusal(403, "access_blocked", _NO_CONFIG_STORE)
        if batch_id is None or state is None:
            return None
        if not self.visible(vk, state, batch_id):
            return _refusal(404, "access_blocked", f"batch '{batch_id}' not found")
        return None

    @staticmethod
    def visible(vk: VirtualKey | None, state: ProviderState, batch_id: str) -> bool:
        """ownedByAnotherKey negated: no key, no job row, a row naming no key, or the key's own batch."""
        if vk is None or batch_id in state.external:
            return True
        owner = state.owners.get(batch_id)
        return not owner or owner == vk.id


def demo_governance(*, mandatory: bool = True) -> Governance:
    """Two tenants with one key each; a third of the batches each, a third created with no key. Mandatory keys, as a
    multi-tenant gateway is usually run, so a keyless exporter is refused and one key sees one tenant."""
    return Governance(
        keys=(
            VirtualKey(
                id="vk-tenant-a",
                value="sk-bf-demo-tenant-a-3f9c2e7a",
                name="tenant-a",
                team_id="team-search",
                customer_id="customer-a",
            ),
            VirtualKey(
                id="vk-tenant-b",
                value="sk-bf-demo-tenant-b-8d41b06c",
                name="tenant-b",
                team_id="team-ads",
                customer_id="customer-b",
            ),
        ),
        mandatory=mandatory,
    )


def write_key_dir(keys: Iterable[VirtualKey], directory: Path) -> list[Path]:
    """One file per key, named after the key's name (or id), holding its value: the layout of the exporter's
    `virtual_key_dir` and of a Kubernetes Secret mounted with one entry per tenant. Files are private (0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for vk in keys:
        path = directory / (vk.name or vk.id)
        path.write_text(vk.value + "\n", encoding="utf-8")
        path.chmod(0o600)
        written.append(path)
    return written
