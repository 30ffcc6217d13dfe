"""`--demo`: the built-in Bifrost simulator, set up as a newcomer's first gateway, and the settings that poll it.

The simulator runs with governance on and two tenants whose keys are mandatory, as multi-tenant gateways are
usually run, and the exporter is given both tenants' keys, as a key directory would give them (in memory: a
read-only container has nowhere to write files): the start-up `view` line and `bifrost_batch_exporter_view_keys`
then show the union view (a keyless exporter would be refused, one key would see one tenant). Batch accounting is on,
its logs API behind an admin session token only this process knows, so the cost metrics move as batches finish and
settle (unless a gateway login was configured for the demo).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import Any

from pydantic import SecretStr

from .logs import add_secrets
from .settings import Settings

DEMO_POLL_INTERVAL = 5.0


@contextlib.contextmanager
def demo_gateway(settings: Settings) -> Iterator[Settings]:
    """Start the simulator; yield `settings` pointed at it (and given its tenants' keys); stop it afterwards."""
    from .simulator import Accounting, Simulator, demo_governance

    governance = demo_governance()
    token = secrets.token_urlsafe(24)
    add_secrets([token])
    simulator = Simulator(governance=governance, accounting=Accounting(), admin_token=token)
    try:
        simulator.start()
        update: dict[str, Any] = {"bifrost_url": simulator.url}
        if settings.basic_auth_username is None and settings.bearer_token is None:
            update |= {"cost_metrics": True, "bearer_token": SecretStr(token)}
        if "poll_interval_seconds" not in settings.model_fields_set:
            update["poll_interval_seconds"] = DEMO_POLL_INTERVAL
        demo = settings.model_copy(update=update)
        if not settings.virtual_keys():
            demo = demo.with_virtual_keys(tuple((vk.name, SecretStr(vk.value)) for vk in governance.keys))
        yield demo
    finally:
        simulator.stop()
