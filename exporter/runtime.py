"""The exporter's own process_* and python_* series, appended to the pre-rendered exposition at scrape time.

Batch series are rendered when the gateway's state changes (seconds to minutes apart, up to a second of CPU for a
large gateway); the process's memory and CPU change all the time. So they are kept apart: prometheus_client's
ProcessCollector, PlatformCollector and GCCollector on a private registry (never the global one, which tests and
embedders share) are collected at most once per second, on demand (about 60 µs: a few /proc reads), encoded by
exposition.py, and appended to the cached batch exposition by `Prerendered.chunks`, which also completes a gzip
stream begun at render time, so a scrape never compresses the large part again.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import Metric

from .exposition import encode

OPENMETRICS_EOF = b"# EOF\n"
REFRESH_SECONDS = 1.0
GZIP_LEVEL = 6
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib writes the gzip header and trailer


class RuntimeMetrics:
    """The runtime families and their encodings, collected again only when older than `min_interval` seconds."""

    def __init__(
        self, *, min_interval: float = REFRESH_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._registry)
        PlatformCollector(registry=self._registry)
        GCCollector(registry=self._registry)
        self._min_interval = min_interval
        self._clock = clock
        self._collected_at = -float("inf")
        self._families: list[Metric] = []
        self._text = b""
        self._openmetrics = b""

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._collected_at < self._min_interval:
            return
        families = list(self._registry.collect())
        text, openmetrics = encode(families)
        self._families, self._text = families, text
        self._openmetrics = openmetrics.removesuffix(OPENMETRICS_EOF)
        self._collected_at = now

    def families(self) -> list[Metric]:
        """The families, for a caller that encodes them with its own (e.g. `--once`)."""
        self._refresh()
        return self._families

    def text(self) -> bytes:
        """Prometheus text 0.0.4 of the runtime families."""
        self._refresh()
        return self._text

    def openmetrics(self) -> bytes:
        """OpenMetrics 1.0.0 of the runtime families, without `# EOF` (it goes after everything else)."""
        self._refresh()
        return self._openmetrics


class Prerendered:
    """One format of the batch exposition, built at render time, ready to have runtime bytes appended per scrape.

    The gzip variant is a deflate stream flushed (not finished) after the batch exposition, kept with its
    compressor: a scrape copies the compressor (a few hundred KiB of state, microseconds), feeds it the runtime
    bytes and finishes the stream, so the body is one ordinary gzip member (httpx, for one, reads only the first
    member of a multi-member body). The finished tail is cached until the runtime bytes change.
    """

    def __init__(self, body: bytes, *, openmetrics: bool) -> None:
        self.head = body.removesuffix(OPENMETRICS_EOF) if openmetrics else body
        self._eof = OPENMETRICS_EOF if openmetrics else b""
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
        self.head_gzip = self._compressor.compress(self.head) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        self._tail_for: bytes | None = None
        self._tail_gzip = b""

    def chunks(self, runtime: bytes, *, gzip: bool) -> tuple[bytes, ...]:
        """The response body as chunks (write them in order; Content-Length is the sum of their lengths)."""
        if not gzip:
            return (self.head, runtime, self._eof)
        if self._tail_for is not runtime:
            compressor = self._compressor.copy()
            self._tail_gzip = compressor.compress(runtime + self._eof) + compressor.flush(zlib.Z_FINISH)
            self._tail_for = runtime
        return (self.head_gzip, self._tail_gzip)
