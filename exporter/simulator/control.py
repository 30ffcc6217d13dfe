"""The `/_sim/` control API: drive the simulator over HTTP (from another process, a shell, or a bench).

GET /_sim/state (batches by status and requests by endpoint, per provider; owners and settlements when on);
POST /_sim/fault, /_sim/batches (also `owner`, `external`, `models`), /_sim/batches/{id}/status,
/_sim/batches/{id}/delete, /_sim/clear, /_sim/tick.
Governance: GET /_sim/governance (the keys, values included: a simulator's keys are fixtures), POST /_sim/owner
{provider, batch_id, owner}. Accounting: GET /_sim/accounting (the ground truth), POST /_sim/accounting/price
{model, input, output}, POST /_sim/accounting/recalculate {models?, missing_only?}.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .wire import Response, dumps, error_body, json_response

if TYPE_CHECKING:
    from .core import Simulator

__all__ = ["Control"]


class Control:
    """Maps control routes onto the simulator's Python API, so both stay one behaviour."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim

    def __call__(self, method: str, path: str, body: bytes) -> Response:
        if method == "GET" and path == "/_sim/state":
            return json_response(200, dumps(self._sim.state()))
        if method == "GET" and path == "/_sim/governance":
            gov = self._sim.governance
            if gov is None:
                return json_response(404, error_body(404, "this simulator has no governance"))
            keys = [
                {"id": k.id, "name": k.name, "value": k.value, "team_id": k.team_id, "active": k.active}
                for k in gov.keys
            ]
            return json_response(
                200, dumps({"mandatory": gov.mandatory, "config_store": gov.config_store, "keys": keys})
            )
        if method == "GET" and path == "/_sim/accounting":
            try:
                return json_response(200, dumps(self._sim.accounting_truth().as_json()))
            except ValueError as exc:
                return json_response(404, error_body(404, str(exc)))
        if method != "POST":
            return json_response(405, error_body(405, "method not allowed"))
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return json_response(400, error_body(400, "body is not JSON"))
        if not isinstance(payload, dict):
            return json_response(400, error_body(400, "body must be a JSON object"))
        try:
            if path == "/_sim/fault":
                fault = payload.pop("fault", None)
                provider = payload.pop("provider", None)
                times = payload.pop("times", None)
                self._sim.set_fault(fault, provider=provider, times=times, **payload)
                return json_response(200, dumps({"fault": fault, "provider": provider, "times": times}))
            if path == "/_sim/batches":
                provider = payload.pop("provider")
                if "models" in payload:
                    payload["models"] = tuple(payload["models"])
                return json_response(200, dumps(self._sim.add_batch(provider, **payload)))
            if path == "/_sim/owner":
                self._sim.set_owner(payload["provider"], payload["batch_id"], payload.get("owner"))
                return json_response(200, dumps({"owner": payload.get("owner")}))
            if path == "/_sim/accounting/price":
                self._sim.set_price(str(payload["model"]), float(payload["input"]), float(payload["output"]))
                return json_response(200, dumps({"model": payload["model"]}))
            if path == "/_sim/accounting/recalculate":
                models = payload.get("models")
                changed = self._sim.recalculate(
                    models=None if models is None else [str(m) for m in models],
                    missing_only=bool(payload.get("missing_only", True)),
                )
                return json_response(200, dumps({"updated": changed}))
            if path == "/_sim/clear":
                self._sim.clear(payload.get("provider"))
                return json_response(200, b'{"cleared":true}')
            if path == "/_sim/tick":
                self._sim.tick()
                return json_response(200, dumps(self._sim.state()))
            if path.startswith("/_sim/batches/") and path.endswith("/status"):
                bid = unquote(path[len("/_sim/batches/") : -len("/status")])
                self._sim.set_status(
                    payload["provider"],
                    bid,
                    payload["status"],
                    payload.get("at"),
                    error_code=payload.get("error_code"),
                )
                return json_response(200, dumps(self._sim.batch(payload["provider"], bid)))
            if path.startswith("/_sim/batches/") and path.endswith("/delete"):
                bid = unquote(path[len("/_sim/batches/") : -len("/delete")])
                self._sim.delete(payload["provider"], bid)
                return json_response(200, dumps({"deleted": bid}))
        except KeyError as exc:
            status = 404 if path.endswith(("/status", "/delete")) else 400
            return json_response(status, error_body(status, f"missing or unknown: {exc}"))
        except (TypeError, ValueError) as exc:
            return json_response(400, error_body(400, str(exc)))
        return json_response(404, error_body(404, f"no control route {path}"))
