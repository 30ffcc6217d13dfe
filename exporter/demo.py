"""`--demo`: the built-in Bifrost simulator, set up as a newcomer's first gateway, and the settings that poll it.

The simulator runs with governance on and two tenants whose keys are mandatory, as multi-tenant gateways are
usually run, and the exporter is given both keys as a key directory: the start-up `view` line and
`bifrost_batch_exporter_view_keys` then show the union view (a keyless exporter would be refused, one key would see
one tenant). The keys are written to a private temporary directory that is removed at exit. Batch accounting is on,
its logs API behind an admin session token only this process knows, so the cost metrics move as batches finish and
settle (unless a gateway login was configured for the demo).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from .logs import add_secrets
from .settings import Settings

DEMO_POLL_INTERVAL = 5.0


@contextlib.contextmanager
def demo_gateway(settings: Settings) -> Iterator[Settings]:
    """Start the simulator; yield `settings` pointed at it (and given its tenants' keys); stop it afterwards."""
    from .simulator import Accounting, Simulator, demo_governance, write_key_dir

    governance = demo_governance()
    key_dir = Path(tempfile.mkdtemp(prefix="bifrost-demo-keys-"))
    token = secrets.token_urlsafe(24)
    add_secrets([token])
    simulator = Simulator(governance=governance, accounting=Accounting(), admin_token=token)
    try:
        write_key_dir(governance.keys, key_dir)
        simulator.start()
        update: dict[str, Any] = {"bifrost_url": simulator.url}
        if settings.basic_auth_username is None and settings.bearer_token is None:
            update |= {"cost_metrics": True, "bearer_token": SecretStr(token)}
        if "poll_interval_seconds" not in settings.model_fields_set:
            update["poll_interval_seconds"] = DEMO_POLL_INTERVAL
        if not settings.virtual_keys():
            update["virtual_key_dir"] = key_dir
        yield settings.model_copy(update=update).reread_secret_files()
    finally:
        simulator.stop()
        shutil.rmtree(key_dir, ignore_errors=True)
