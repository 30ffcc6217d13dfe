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

Modules, one job each: ``flavors`` (each provider's batch shape and views), ``store`` (batches and paging
indexes), ``lifecycle`` (planned lives played against the clock), ``scenario`` (scripted scenarios with a known
ground truth), ``faults`` (injected failures), ``wire`` (cursors and bodies as Bifrost encodes them), ``gateway``
(the HTTP API), ``control`` (the ``/_sim/`` API), ``server`` (socket plumbing), ``world`` (shared state), ``core``
(the ``Simulator`` facade), ``cli``.
"""

from .core import Simulator
from .faults import FAULTS
from .flavors import ACTIVE_STATUSES, DEFAULT_PROVIDERS, TERMINAL_STATUSES, ProviderSpec
from .lifecycle import Clock, generate_batches
from .scenario import Script, ScriptedBatch, build_script
from .wire import decode_cursor, encode_cursor, list_page_bytes

__all__ = [
    "ACTIVE_STATUSES",
    "DEFAULT_PROVIDERS",
    "FAULTS",
    "TERMINAL_STATUSES",
    "Clock",
    "ProviderSpec",
    "Script",
    "ScriptedBatch",
    "Simulator",
    "build_script",
    "decode_cursor",
    "encode_cursor",
    "generate_batches",
    "list_page_bytes",
    "main",
]


def main(argv: list[str] | None = None) -> int:
    """Kept importable from the package as before: `from exporter.simulator import main`."""
    from .cli import main as cli_main

    return cli_main(argv)
