"""A faithful fake Bifrost gateway for the batch API.

The exporter's ``--demo`` mode, the test suites and the benchmarks all need a gateway that behaves like the
real one, including its quirks, without network access or a Go toolchain. Everything is stdlib so the simulator
runs wherever the package runs, and time comes from an injected clock so lifecycles are deterministic under test.

Realistic is the default, each quirk as read in Bifrost's source (see ``flavors`` and ``gateway``): serial
multi-key cursors, Anthropic/Gemini/Bedrock answering every ``after`` with page 1, keys of one account listing the
same batches, "invalid pagination cursor" as HTTP 500, Bedrock/Gemini list summaries, raw-response echo unless
the client says ``x-bf-send-back-raw-response: false``, no ``cache_debug``. Kinder behaviour exists only as
explicit switches (``ProviderSpec.after_ignored=False``, ``sparse_items=False``, ``Simulator(cache_debug=True)``)
for tests and benchmarks that name why they need it.

Off by default, as strict as the newest gateway when switched on: ``Simulator(governance=Governance(...))`` (virtual
keys, an owner per batch, narrowed lists, another key's batch a 404) and ``Simulator(accounting=Accounting())`` (every
finished batch settled into a ``batch_results`` log row, read with the logs API).

Modules, one job each: ``flavors`` (each provider's batch shape and views), ``store`` (batches and paging
indexes), ``lifecycle`` (planned lives played against the clock), ``scenario`` (scripted scenarios with a known
ground truth), ``faults`` (injected failures), ``wire`` (cursors and bodies as Bifrost encodes them), ``governance``
(virtual keys and who sees which batch), ``accounting`` (job rows, the sweeper, settlement rows), ``logsapi`` (the
logs API), ``gateway`` (the HTTP API), ``control`` (the ``/_sim/`` API), ``server`` (socket plumbing), ``world``
(shared state), ``core`` (the ``Simulator`` facade), ``cli``.
"""

from .accounting import (
    DEFAULT_PRICES,
    Accounting,
    AccountingTruth,
    Settlement,
    accounting_log_id,
)
from .core import Simulator
from .faults import FAULTS
from .flavors import (
    ACTIVE_STATUSES,
    DEFAULT_PROVIDERS,
    NEWEST_EXTRA_PROVIDERS,
    NEWEST_PROVIDERS,
    TERMINAL_STATUSES,
    ProviderSpec,
)
from .governance import Governance, VirtualKey, demo_governance, write_key_dir
from .lifecycle import Clock, generate_batches
from .scenario import Script, ScriptedBatch, build_script
from .wire import decode_cursor, encode_cursor, list_page_bytes

__all__ = [
    "ACTIVE_STATUSES",
    "DEFAULT_PRICES",
    "DEFAULT_PROVIDERS",
    "FAULTS",
    "NEWEST_EXTRA_PROVIDERS",
    "NEWEST_PROVIDERS",
    "TERMINAL_STATUSES",
    "Accounting",
    "AccountingTruth",
    "Clock",
    "Governance",
    "ProviderSpec",
    "Script",
    "ScriptedBatch",
    "Settlement",
    "Simulator",
    "VirtualKey",
    "accounting_log_id",
    "build_script",
    "decode_cursor",
    "demo_governance",
    "encode_cursor",
    "generate_batches",
    "list_page_bytes",
    "main",
    "write_key_dir",
]


def main(argv: list[str] | None = None) -> int:
    """Kept importable from the package as before: `from exporter.simulator import main`."""
    from .cli import main as cli_main

    return cli_main(argv)
