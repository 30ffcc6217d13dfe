"""Benchmark: what the state directory costs per poll (issue 20 item 4), against the whole-file JSON rewrite of
format version 1 measured in the same run.

A ledger is filled as a large account leaves it, then polled N times with 10 transitions per poll (10 running
batches finish, 10 new ones start, every running batch seen again), each poll ending with its write as the poller
does it: `Journal.prepare` on the event loop, `_Write.run` (the system calls, fsync included) in a worker thread.
Time is wall time of both parts; bytes are what the write hands the kernel. Compactions (a new base once the
journal outgrows the old one) happen when they would, and are included in the means.

Workloads:
- the realistic 1M-batch account (bench/account.py): three providers, each ledger holding the ids finished in
  the last 48 hours (2/21 of a 3-week history: 31,746 per provider) and 100 running; 10 transitions per poll in
  all, spread over the providers, so a poll interval writes three records;
- the worst case: one provider whose ledger is at its 1,000,000-id cap;
- owner groups: the realistic account's first provider with `metadata_labels` of two keys and 1,000 groups (team
  × project), every group with finished batches of three statuses (per-group counter tables of 3,000 rows each).

Baseline: format version 1 (the whole ledger as one JSON object, ids as strings, written to a temporary file,
fsynced and renamed over the old one), for the same ledger, a few polls (it is slow at a million ids).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Report, parser
from exporter import statefile
from exporter.client import REASONS
from exporter.ledger import Ledger
from exporter.models import Batch
from exporter.settings import DEFAULT_DURATION_BUCKETS, DEFAULT_LATENCY_BUCKETS

KIB = 1024
NOW = 1_800_000_000.0
INTERVAL = 30.0
TRANSITIONS = 10
RUNNING = 100  # per provider in the realistic account
TARGET_MS = 5.0
TARGET_KIB = 64.0


GROUPS = 1_000
KEYS = ("team", "project")
_ENDS = ("completed", "failed", "expired")


def _metadata(serial: int, groups: int) -> dict[str, str] | None:
    if not groups:
        return None
    group = serial % groups
    return {"team": f"team-{group % 50}", "project": f"project-{group // 50}"}


def _running(batch_id: str, created: float, groups: int = 0, serial: int = 0) -> Batch:
    return Batch(
        id=batch_id,
        status="in_progress",
        created_at=created,
        expires_at=created + 86_400,
        metadata=_metadata(serial, groups),
    )


def _finished(batch_id: str, created: float, at: float, groups: int = 0, serial: int = 0) -> Batch:
    status = _ENDS[(serial // max(1, groups)) % 3] if groups else "completed"
    if status == "completed":
        return Batch(
            id=batch_id,
            status=status,
            created_at=created,
            completed_at=at,
            metadata=_metadata(serial, groups),
        )
    if status == "failed":
        return Batch(
            id=batch_id, status=status, created_at=created, failed_at=at, metadata=_metadata(serial, groups)
        )
    return Batch(
        id=batch_id, status=status, created_at=created, expired_at=at, metadata=_metadata(serial, groups)
    )


@dataclass
class Provider:
    """One provider's ledger and journal, and the batches running at the gateway."""

    name: str
    ledger: Ledger
    journal: statefile.Journal
    running: list[str] = field(default_factory=list)
    serial: int = 0
    groups: int = 0  # owner groups (metadata_labels); 0: none

    def fill(self, settled: int, running: int) -> None:
        """The ledger as a large account leaves it: `settled` ids finished within the retention, `running`
        active ones."""
        page: list[Batch] = []
        for i in range(settled):
            page.append(
                _finished(f"{self.name}-old-{i:09d}", NOW - 3600, NOW - 3000 + i * 1e-3, self.groups, i)
            )
            if len(page) == 10_000:
                self.ledger.observe_page(page, NOW)
                page = []
        self.ledger.observe_page(page, NOW)
        self.running = [self._new() for _ in range(running)]
        self.ledger.observe_page([_running(i, NOW, self.groups, n) for n, i in enumerate(self.running)], NOW)
        self.ledger.finish_poll(NOW, complete=True)

    def _new(self) -> str:
        self.serial += 1
        return f"{self.name}-new-{self.serial:09d}"

    def poll(self, n: int, transitions: int) -> None:
        """Poll number n: `transitions` running batches finish and as many start; every running one is seen."""
        at = NOW + n * INTERVAL
        done, self.running = self.running[:transitions], self.running[transitions:]
        self.running += [self._new() for _ in range(transitions)]
        batches = [
            _finished(i, at - 600, at - 1, self.groups, self.serial * 7 + k) for k, i in enumerate(done)
        ] + [_running(i, at - 5, self.groups, k) for k, i in enumerate(self.running)]
        self.ledger.poll_started()
        self.ledger.requests_sent("list", 2)
        self.ledger.pages_fetched(2, [0.12, 0.2], ())
        self.ledger.observe_page(batches, at)
        self.ledger.finish_poll(at, complete=False)

    def write(self, now: float) -> tuple[float, int, bool]:
        """(seconds, bytes, whether a compaction) of one save, as the poller does it."""
        t0 = time.perf_counter()
        write = self.journal.prepare(self.ledger, now)
        write.run(statefile.REAL_FILE_OPS)
        self.journal.done(write)
        return time.perf_counter() - t0, write.size, write.compaction


def _ledger(groups: int = 0) -> Ledger:
    return Ledger(
        NOW - 86_400,
        DEFAULT_DURATION_BUCKETS,
        DEFAULT_LATENCY_BUCKETS,
        REASONS,
        metadata_keys=KEYS if groups else (),
    )


@dataclass
class Figures:
    seconds: list[float] = field(default_factory=list)  # per poll interval, all providers' writes
    sizes: list[int] = field(default_factory=list)
    compactions: int = 0
    compaction_seconds: float = 0.0
    compaction_bytes: int = 0
    # A compaction asked for after the polls, per provider: (bytes, seconds, polls between two of them: a journal is
    # compacted once larger than its base and than COMPACT_MIN_BYTES). 400 polls of a few KiB reach none.
    forced: list[tuple[int, float, float]] = field(default_factory=list)

    def amortized(self) -> tuple[float, float]:
        """(bytes, seconds) per poll interval that compactions add, spread over the polls between them."""
        return (
            sum(size / every for size, _, every in self.forced),
            sum(took / every for _, took, every in self.forced),
        )


def run(
    directory: Path, names: list[str], settled: int, running: int, polls: int, groups: int = 0
) -> Figures:
    providers = [Provider(n, _ledger(groups), statefile.Journal(directory, n), groups=groups) for n in names]
    for p in providers:
        p.fill(settled, running)
        p.write(NOW)  # the first write is the base
    out = Figures()
    records: dict[str, list[int]] = {p.name: [] for p in providers}
    for n in range(1, polls + 1):
        seconds = 0.0
        size = 0
        for i, p in enumerate(providers):
            # TRANSITIONS per interval in all, spread over the providers.
            share = TRANSITIONS // len(providers) + (1 if i < TRANSITIONS % len(providers) else 0)
            p.poll(n, share)
            took, written, compaction = p.write(NOW + n * INTERVAL)
            seconds += took
            size += written
            if compaction:
                out.compactions += 1
                out.compaction_seconds = max(out.compaction_seconds, took)
                out.compaction_bytes = max(out.compaction_bytes, written)
            else:
                records[p.name].append(written)
        out.seconds.append(seconds)
        out.sizes.append(size)
    for p in providers:
        p.journal.compact_next()
        took, written, _ = p.write(NOW + (polls + 1) * INTERVAL)
        every = max(statefile.COMPACT_MIN_BYTES, written) / statistics.mean(records[p.name] or [1])
        out.forced.append((written, took, every))
        out.compaction_seconds = max(out.compaction_seconds, took)
        out.compaction_bytes = max(out.compaction_bytes, written)
    return out


def version_1(directory: Path, names: list[str], settled: int, running: int, polls: int) -> Figures:
    """Format version 1's cost for the same ledgers: every poll, the whole state as one JSON file, replaced."""
    providers = [Provider(n, _ledger(), statefile.Journal(directory, n)) for n in names]
    for p in providers:
        p.fill(settled, running)
    out = Figures()
    for n in range(1, polls + 1):
        seconds = 0.0
        size = 0
        for p in providers:
            p.poll(n, TRANSITIONS // len(providers))
            t0 = time.perf_counter()
            state = p.ledger.to_state()
            # Version 1 kept ids as strings: a 24-character id in place of each 64-bit key.
            ids = {f"batch_{key:018x}": at for key, at in state.pop("settled")}
            ids.update({i: -float(poll + 1) for i, poll in state.pop("active").items()})
            doc = {
                "format": statefile.FORMAT,
                "version": 1,
                "provider": p.name,
                "ledger": {**state, "ids": ids},
            }
            data = json.dumps(doc, separators=(",", ":")).encode()
            statefile.write_atomic(directory / f"v1-{p.name}.json", [data])
            seconds += time.perf_counter() - t0
            size += len(data)
        out.seconds.append(seconds)
        out.sizes.append(size)
    return out


def _row(name: str, figures: Figures, ids: int) -> list[object]:
    sizes = figures.sizes
    return [
        name,
        f"{ids:,}",
        statistics.mean(sizes) / KIB,
        statistics.median(sizes) / KIB,
        max(sizes) / KIB,
        statistics.median(figures.seconds) * 1e3,
        _p99(figures.seconds) * 1e3,
        statistics.mean(figures.seconds) * 1e3,
        max(figures.seconds) * 1e3,
        figures.compactions,
    ]


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    started = time.perf_counter()
    report = Report("state_writes", args.smoke)
    scale = 100 if args.smoke else 1
    polls = 20 if args.smoke else 400
    realistic_settled = 31_746 // scale
    worst_settled = 1_000_000 // scale
    names3 = ["openai", "azure", "anthropic"]
    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
        base = Path(tmp)
        realistic = run(base / "realistic", names3, realistic_settled, RUNNING, polls)
        worst = run(base / "worst", ["openai"], worst_settled, 3 * RUNNING, polls)
        grouped = run(base / "groups", ["openai"], realistic_settled, RUNNING, polls, GROUPS // scale)
        v1_polls = 3 if args.smoke else 5
        v1_realistic = version_1(base / "v1r", names3, realistic_settled, RUNNING, v1_polls)
        v1_worst = version_1(base / "v1w", ["openai"], worst_settled, 3 * RUNNING, v1_polls)
    rows = [
        _row("realistic 1M account, 3 providers", realistic, 3 * (realistic_settled + RUNNING)),
        _row("  format version 1 (baseline)", v1_realistic, 3 * (realistic_settled + RUNNING)),
        _row("1M ids in one ledger (the cap)", worst, worst_settled + 3 * RUNNING),
        _row("  format version 1 (baseline)", v1_worst, worst_settled + 3 * RUNNING),
        _row(
            f"{GROUPS // scale:,} owner groups (metadata_labels), 1 provider",
            grouped,
            realistic_settled + RUNNING,
        ),
    ]
    header = ["workload", "ids held", "KiB mean", "KiB median", "KiB max", "ms median", "ms p99", "ms mean"]
    report.table(
        f"State written per poll interval, {TRANSITIONS} transitions per interval ({polls} polls, fsync "
        "included; a compaction's cost in the notes below)",
        [*header, "ms max", "compactions"],
        rows,
    )
    for name, figures in (("realistic", realistic), ("at the cap", worst), ("owner groups", grouped)):
        every = min(e for _, _, e in figures.forced)
        extra_bytes, extra_seconds = figures.amortized()
        report.note(
            f"{name}: a compaction writes {figures.compaction_bytes / KIB:,.0f} KiB in "
            f"{figures.compaction_seconds * 1e3:.1f} ms (one asked for after the polls: {polls} polls reach none), "
            f"every {every:,.0f} polls or more: {extra_bytes / KIB:.2f} KiB and {extra_seconds * 1e3:.3f} ms per "
            "interval spread over them, included in the bytes checks"
        )
    if not args.smoke:
        for name, figures, v1 in (
            ("realistic 1M account", realistic, v1_realistic),
            ("1M ids", worst, v1_worst),
            (f"{GROUPS:,} owner groups", grouped, None),
        ):
            kib = (statistics.mean(figures.sizes) + figures.amortized()[0]) / KIB
            ms = _p99(figures.seconds) * 1e3
            versus = (
                f" ({statistics.mean(v1.sizes) / statistics.mean(figures.sizes):,.0f}× less than version 1)"
                if v1 is not None
                else f" (median {statistics.median(figures.sizes) / KIB:.1f} KiB)"
            )
            report.check(
                f"state bytes per poll, {name} (mean, compactions spread over the polls between them)",
                kib,
                f"≤ {TARGET_KIB:.0f} KiB",
                kib <= TARGET_KIB,
                f"{kib:.1f} KiB{versus}",
            )
            report.check(
                f"state write time per poll, {name} (p99)",
                ms,
                f"≤ {TARGET_MS:.0f} ms",
                ms <= TARGET_MS,
                f"{ms:.2f} ms p99, {statistics.median(figures.seconds) * 1e3:.2f} ms median"
                + (f" (version 1: {statistics.median(v1.seconds) * 1e3:,.0f} ms)" if v1 is not None else ""),
            )
    report.finish(args.json, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
