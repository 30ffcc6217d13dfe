"""The state directory's side of a poller: its lock, reading each provider's saved ledger back at the start, and
writing each poll's changes before its values are published (statefile.py has the format; docs/state.md the
guarantees).

Apart from the poller so that the files a restart resumes from are read and written in one place (what rides beside
the ledger, the holds and the early warning's calibration, the poller puts together and takes back), with one rule
for every fault once the directory is this process's: a state that cannot be used, or a write that fails, is one
clear log line and serving goes on (without durable state, or from the last write that worked). Only a directory
another exporter holds, or files of a newer version, stop the start (statefile.StateDirError), on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from . import statefile
from .cost import CostLedger
from .holds import RestoredCostHolds, RestoredHolds, restore_cost_shown, restore_shown
from .ledger import Ledger

# The fields the poller keeps beside the ledger's head (Poller._durable_extras), which restore hands back.
RIDING = ("tracker", "shown", "cost_shown", "view")


@dataclass(frozen=True, slots=True)
class Resumed:
    """What a provider's saved state brings back besides its ledgers: the holds the saved process showed, and the
    early warning's calibration (None: none saved, or no state)."""

    holds: RestoredHolds = field(default_factory=dict)
    cost_holds: RestoredCostHolds = field(default_factory=dict)
    tracker: Any = None
    view: dict[str, Any] | None = None  # the keys the saved process listed with (Run.saved_view)


class DurableState:
    def __init__(self, state_dir: Path | None, clock: Callable[[], float], gateway: str = "") -> None:
        self._state_dir = state_dir
        self._clock = clock
        # The gateway the state is kept for (bifrost_url as validated: no credentials, no query). A state another
        # gateway's account wrote must not lend its watermark to this one (restore).
        self._gateway = gateway
        self._log = structlog.get_logger("exporter.poller")  # its lines are the poller's, as they always were
        self._lock = self._take(state_dir)
        self.file_ops = statefile.REAL_FILE_OPS  # tests swap in failing system calls
        self.journals: dict[str, statefile.Journal] = {}  # per provider, with a state directory
        self._failing: set[str] = set()  # providers whose last write failed (said once, and when it recovers)

    def _take(self, state_dir: Path | None) -> statefile.StateLock | None:
        """The directory's lock (statefile.lock): this process's alone for its whole life, taken before anything is
        read from it, so two exporters can never interleave their writes."""
        if state_dir is None:
            return None
        try:
            taken = statefile.lock(state_dir)
        except OSError as exc:
            # Not even a lock file could be made: writes will fail the same way and say so per poll.
            self._log.warning(
                "state_dir_unusable",
                setting="state_dir",
                path=str(state_dir),
                detail=f"{type(exc).__name__}: {exc.strerror or exc}"[:300],
                consequence="serving on without durable state",
            )
            return None
        if taken.read_only:
            self._log.warning(
                "state_dir_read_only",
                setting="state_dir",
                path=str(state_dir),
                consequence="its state is restored; every write fails (state_write_failed) until it is writable",
            )
            return taken
        removed = statefile.remove_temporaries(state_dir)
        if removed:
            self._log.info("state_temporaries_removed", path=str(state_dir), count=removed)
        return taken

    def others(self, providers: tuple[str, ...]) -> None:
        """Say at start which saved providers are not polled. Files left by a provider moved to another shard
        would come back with it (a values change moving it back): its ledger from before the move would then count
        again every transition the other shard counted meanwhile, and the dashboards sum the shards."""
        if self._state_dir is None or self._lock is None:
            return
        others = sorted(statefile.providers_saved(self._state_dir) - set(providers))
        if others:
            self._log.warning(
                "state_other_providers",
                path=str(self._state_dir),
                providers=others[:50],
                detail="the state dir holds ledgers of providers this exporter does not poll",
                consequence="if another exporter polls them now, remove their ledger-<provider>.* files before "
                "they are polled here again, or their transitions since they left are counted twice",
            )

    def close(self) -> None:
        """Release the state directory (a restarted exporter in the same process can take it again)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def restore(
        self, provider: str, ledger: Ledger, cost: CostLedger | None, extras: Callable[[], dict[str, Any]]
    ) -> Resumed:
        """The provider's saved state into `ledger` and `cost`; what else the saved process kept (its holds, the
        early warning's calibration) for the poller. A first start writes its start at once (`extras`: what rides
        beside the ledger)."""
        state_dir = self._state_dir
        if state_dir is None or self._lock is None:
            # Without the lock (it could not be taken: a read-only or lock-less mount) the directory is not ours:
            # another exporter may be writing it, so it is neither read nor written ("without durable state").
            return Resumed()
        path = str(statefile.base_path(state_dir, provider))
        journal = self.journals[provider] = statefile.Journal(state_dir, provider)
        try:
            restored = statefile.read(state_dir, provider)
            if restored is None:
                self._log.info(
                    "state_not_found", provider=provider, path=path, detail="starting without history"
                )
                self._write_initial(provider, ledger, journal, extras(), cost)
                return Resumed()
            state = dict(restored.state)
            # What rides beside the ledger's own fields (the poller's; absent from the files of earlier releases).
            riding = {name: state.pop(name) for name in RIDING if name in state}
            saved_gateway = state.pop("gateway", None)
            start = ledger.started_at
            notes = ledger.load_state(state, restored.settled)
            cost_notes = self._restore_cost(provider, restored, cost)
            # A note a journal record repeats (each record of a changed metadata_labels says so) is said once.
            notes = sorted(set(notes) | set(cost_notes or []))
            another = isinstance(saved_gateway, str) and saved_gateway != self._gateway
            if another:
                self._another_gateway(provider, str(saved_gateway), ledger, cost, start)
            view = riding.get("view")
            resumed = Resumed(
                restore_shown(riding.get("shown")),
                restore_cost_shown(riding.get("cost_shown")),
                riding.get("tracker"),
                view if isinstance(view, dict) else None,
            )
        except statefile.StateError as exc:
            self._log.warning(
                "state_unusable",
                provider=provider,
                setting="state_dir",
                detail=str(exc)[:300],
                consequence="counting starts afresh; transitions before this start are not counted",
            )
            return Resumed()
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
            self._log.warning(
                "state_unusable",
                provider=provider,
                setting="state_dir",
                path=path,
                detail=f"malformed ledger ({type(exc).__name__})",
                consequence="counting starts afresh; transitions before this start are not counted",
            )
            return Resumed()
        journal.attach(restored)
        if another:
            # Written at once: a process stopped before its first poll would leave the next one the old URL, and it
            # would count from its own start, taking what ended in between for history. What rides beside the
            # ledger goes as restored (this write may be a whole new base).
            self._write_initial(provider, ledger, journal, riding, cost)
        if cost_notes is None:
            # The next write is a base holding the cost ledger as recovered: appended after the unreadable record,
            # every later restart would stop at it again and lose the costs counted since (the batch ledger's part
            # of those records replays, so their batches are never awaited again).
            journal.compact_next()
        if restored.marker_problem is not None:
            self._log.warning(
                "state_marker_unusable",
                provider=provider,
                setting="state_dir",
                detail=restored.marker_problem[:300],
                consequence="the state was read from its base and journal; the marker is written again",
            )
        if restored.dropped_bytes and restored.torn:
            self._log.info(
                "state_journal_tail_dropped",
                provider=provider,
                path=str(statefile.journal_path(state_dir, provider)),
                bytes=restored.dropped_bytes,
                detail=f"{restored.damage}: a write cut short by a stop; resumed from the last complete record",
            )
        elif restored.dropped_bytes:
            self._log.warning(
                "state_journal_damaged",
                provider=provider,
                path=str(statefile.journal_path(state_dir, provider)),
                bytes=restored.dropped_bytes,
                records_restored=restored.records,
                detail=f"{restored.damage}, with more written after it: not a write cut short by a stop",
                consequence="the polls saved after it are lost: batches they counted that ended after the "
                "restored watermark are counted again",
            )
        self._log.info(
            "state_restored",
            provider=provider,
            path=path,
            watermark=ledger.started_at,
            tracked_ids=ledger.view().tracked_ids,
            journal_records=restored.records,
            migrated_from_version_1=restored.migrated or None,
            notes=notes or None,
        )
        return resumed

    def _another_gateway(
        self, provider: str, saved: str, ledger: Ledger, cost: CostLedger | None, start: float
    ) -> None:
        """The state was written for another bifrost_url: perhaps another gateway and account (a state dir reused,
        a values file copied), perhaps the same one renamed. Its watermark says nothing about this gateway's
        batches: the other account's could be hours old, and every batch here that ended since would count as a
        transition (a page for another account's past). Counting starts as an exporter started now without state
        would, the counters continue (a rename keeps increase() right), and the other gateway's awaited settlements
        are not looked up here (they would be counted missing)."""
        ledger.rebase(start)
        dropped = cost.forget_awaited() if cost is not None else 0
        self._log.warning(
            "state_gateway_changed",
            provider=provider,
            setting="bifrost_url",
            saved=saved[:300],
            configured=self._gateway[:300],
            settlements_dropped=dropped or None,
            consequence="batches that ended before this start are history (transitions while the exporter was down "
            "are not counted); the counters continue",
        )

    def _extras(self, extras: dict[str, Any]) -> dict[str, Any]:
        return {**extras, "gateway": self._gateway}

    def _write_initial(
        self,
        provider: str,
        ledger: Ledger,
        journal: statefile.Journal,
        extras: dict[str, Any],
        cost: CostLedger | None,
    ) -> None:
        """A first start records its start at once: a process killed before its first poll completes must not
        leave the next one to call every transition since then history."""
        try:
            write = journal.prepare(ledger, self._clock(), extras=self._extras(extras), cost=cost)
            write.run(self.file_ops)
        except (OSError, ValueError) as exc:
            journal.failed()
            self._write_failed(provider, exc, "serving on; a restart will not resume from this start")
            return
        journal.done(write)

    async def save(
        self,
        provider: str,
        ledger: Ledger,
        now: float,
        extras: Callable[[], dict[str, Any]],
        cost: CostLedger | None,
    ) -> None:
        """The poll's changes to the ledger, on disk before its values are published (only what changed: a
        journal record; now and then the whole ledger as a new base)."""
        journal = self.journals.get(provider)
        if journal is None:
            return
        try:
            write = journal.prepare(ledger, now, extras=self._extras(extras()), cost=cost)
            await asyncio.to_thread(write.run, self.file_ops)
        except (OSError, ValueError) as exc:
            journal.failed()
            if provider not in self._failing:
                self._write_failed(provider, exc, "serving on; a restart will not resume from this poll")
            self._failing.add(provider)
            return
        journal.done(write)
        if cost is not None:
            cost.mark_saved()
        if provider in self._failing:
            self._log.info("state_write_recovered", provider=provider)
        self._failing.discard(provider)

    # --- cost_metrics (exporter/cost.py) ------------------------------------------------------------------------

    def _write_failed(self, provider: str, exc: Exception, consequence: str) -> None:
        self._log.warning(
            "state_write_failed",
            provider=provider,
            setting="state_dir",
            detail=f"{type(exc).__name__}: {exc}"[:300],
            consequence=consequence,
        )

    def _restore_cost(
        self, provider: str, restored: statefile.Restored, cost: CostLedger | None
    ) -> list[str] | None:
        """The cost ledger as of the base, then each journal record's changes, as the ledger's own were; None when
        a part could not be read (the ledger then stands as of the last part that could)."""
        if cost is None:
            return []
        if restored.cost is None and not restored.cost_deltas:
            # Written with cost_metrics off (or by a release without it): nothing to resume, and the batches that
            # finished meanwhile were never awaited; said, not silent.
            return ["no cost ledger saved (cost_metrics was off): cost counters start from 0, and batches that "
                    "finished before this start are not looked up"]  # fmt: skip
        applied = 0
        try:
            notes = cost.load_state(restored.cost)
            for delta in restored.cost_deltas:
                notes += cost.apply_delta(delta)
                applied += 1
            return notes
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
            self._log.warning(
                "cost_state_unusable",
                provider=provider,
                detail=f"malformed cost ledger ({type(exc).__name__})",
                records_applied=applied,
                consequence="cost counters resume from the last readable record; later settlements may be missed; "
                "the state is written whole at the next save",
            )
            return None
