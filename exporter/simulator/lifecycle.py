"""How batches live: a whole life drawn up front per batch, then played out against the clock.

Plans are absolute schedules, so what a client sees depends only on the clock, never on how often it looks; that
keeps tests deterministic under an injected clock and lets a demo move in real time.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable
from typing import Any

from .flavors import (
    DAY,
    EXPIRED_CODE,
    NO_FINALIZING,
    OPENAI_SHAPED,
    TERMINAL_STATUSES,
    Step,
    Style,
    apply_step,
    new_id,
    skeleton,
)
from .store import ProviderState
from .wire import error_body

__all__ = [
    "TOTALS",
    "Clock",
    "Lifecycle",
    "generate_batches",
    "initial_timing",
    "plan_life",
    "reported_total",
]

Clock = Callable[[], float]


def plan_life(rng: random.Random, flavor: str, total: int, scale: float) -> tuple[str, list[Step]]:
    """A whole life drawn up front (offsets from creation), so state depends only on the clock, not on how
    often anyone looks. Step times are tens of seconds at scale 1 so a demo shows movement within a minute.

    Stages and counts follow what each provider shows through Bifrost: Anthropic and Gemini start in progress
    (Gemini's PENDING is in_progress through Bifrost, with nothing done for a while); only OpenAI-shaped and Vertex
    batches pass through `finalizing`, and Vertex's JOB_STATE_QUEUED arrives as `validating`; a batch refused while
    validating never had a total (OpenAI reports 0); Anthropic's counts move only when the whole batch ends (its
    requests are `processing` until then); the others' counts move in steps some seconds apart (providers refresh
    them every few minutes). Failed and expired batches carry an OpenAI error code where the flavour has errors."""
    outcome = rng.choices(_OUTCOMES, _WEIGHTS)[0]
    steps: list[Step] = []
    t = 0.0
    starts_running = flavor in ("anthropic", "gemini")
    initial = "in_progress" if starts_running else "validating"
    if not starts_running:
        if outcome == "failed" and rng.random() < 0.3:
            # Refused while validating the input file: nothing ran, and no total was ever read.
            t += rng.uniform(5, 20) * scale
            steps.append(Step(t, "failed", 0, 0, code="invalid_json_line", total=0))
            return initial, steps
        t += rng.uniform(5, 20) * scale
        steps.append(Step(t, "in_progress", 0, 0))
    elif flavor == "gemini":
        t += rng.uniform(5, 20) * scale  # PENDING: in_progress through Bifrost, nothing done yet
    run = rng.uniform(30, 120) * scale
    end_fraction = 1.0 if outcome == "completed" else rng.uniform(0.1, 0.9)
    fail_rate = rng.uniform(0.3, 0.9) if outcome == "failed" else rng.uniform(0.0, 0.03)
    n = max(1, int(run * end_fraction / (10 * scale)))
    start = t
    completed = failed = 0
    anthropic = flavor == "anthropic"
    for i in range(1, n + 1):
        frac = end_fraction * i / n
        processed = int(total * frac)
        failed = int(processed * fail_rate)
        completed = processed - failed
        if not anthropic:  # Anthropic's counts stay `processing` until the batch ends
            steps.append(Step(start + run * frac, None, completed, failed))
    t = start + run * end_fraction
    rest = total - completed - failed
    if outcome == "completed":
        if flavor not in NO_FINALIZING:
            t += rng.uniform(1, 3) * scale
            steps.append(Step(t, "finalizing", completed, failed))
        t += rng.uniform(5, 15) * scale
        steps.append(Step(t, "completed", completed, failed))
    elif outcome == "failed":
        t += rng.uniform(1, 5) * scale
        code = rng.choice(_RUN_FAILURES)
        steps.append(Step(t, "failed", completed, max(1, failed + rest), code=code))
    elif outcome == "expired":
        t += rng.uniform(5, 30) * scale
        steps.append(Step(t, "expired", completed, failed, 0, rest if anthropic else 0, code=EXPIRED_CODE))
    else:
        t += rng.uniform(1, 5) * scale
        steps.append(Step(t, "cancelling", completed, failed))
        t += rng.uniform(5, 20) * scale
        steps.append(Step(t, "cancelled", completed, failed, rest if anthropic else 0, 0))
    return initial, steps


def _demo(flavor: str, scenario: str) -> dict[str, str] | None:
    """The demo batches say which scenario they play where the provider carries metadata (OpenAI, Azure): shown as a
    label with `metadata_labels: [scenario]`."""
    return {"team": "demo", "scenario": scenario} if flavor in OPENAI_SHAPED else None


def reported_total(initial: str, total: int, steps: list[Step]) -> tuple[int, list[Step]]:
    """A batch that starts in `validating` reports a total of 0 until its input file has been read (OpenAI, Azure,
    Bedrock): the skeleton gets 0 and the steps carry the total from the first one on (unless one says otherwise,
    as a batch refused while validating does)."""
    if initial != "validating":
        return total, steps
    return 0, [step if step.total is not None else step._replace(total=total) for step in steps]


_OUTCOMES = ("completed", "failed", "expired", "cancelled")
_WEIGHTS = (62.0, 12.0, 9.0, 12.0)
_RUN_FAILURES = ("token_limit_exceeded", "model_not_found")


TOTALS = (10, 50, 100, 100, 250, 500, 1000, 2000, 5000, 10000)


def initial_timing(rng: random.Random, now: float, steps: list[Step]) -> float:
    """Recent batches are still moving; older ones ended a while ago (terminal timestamps in the past)."""
    recent = rng.random() < 0.4
    length = steps[-1].t if steps else 0.0
    created = now - rng.uniform(0, 100) if recent else now - length - rng.uniform(60, 6 * 3600)
    return created


def generate_batches(
    provider: str,
    n: int,
    *,
    seed: int = 0,
    now: float | None = None,
    flavor: str = "openai",
    style: Style = "legacy",
    latency_ms: int = 120,
    cache_debug: bool = True,
) -> list[dict[str, Any]]:
    """Realistic static batches for benchmarks and fixtures: the same shapes and status mix the live simulator
    produces, without the server. Legacy style by default so items carry full extra_fields (some with
    cache_debug)."""
    rng = random.Random(f"{seed}:{provider}:generate")
    at = time.time() if now is None else now
    out: list[tuple[tuple[int, int], dict[str, Any]]] = []
    seen: set[str] = set()
    for seq in range(n):
        total = rng.choice(TOTALS)
        scale = 1.0 if rng.random() < 0.4 else rng.uniform(5, 300)
        initial, steps = plan_life(rng, flavor, total, scale)
        created = initial_timing(rng, at, steps)
        total, steps = reported_total(initial, total, steps)
        bid = new_id(rng, flavor)
        while bid in seen:
            bid = new_id(rng, flavor)
        seen.add(bid)
        batch = skeleton(
            rng,
            batch_id=bid,
            provider=provider,
            flavor=flavor,
            style=style,
            created=int(created),
            total=total,
            status=initial,
            latency_ms=latency_ms,
            cache_debug=cache_debug,
        )
        due = [step for step in steps if created + step.t <= at]
        for i, step in enumerate(due):
            # Counts are absolute, so only status changes and the last step matter: cheaper at 100k.
            if step.status is not None or i == len(due) - 1:
                apply_step(batch, flavor, step, created)
        out.append(((int(created), seq), batch))
    out.sort(key=lambda pair: pair[0], reverse=True)
    return [batch for _, batch in out]


class Lifecycle:
    """Creates batches at a steady pace and applies their planned steps when the clock reaches them.

    Not thread-safe: every call happens under the world lock. With `enabled` False the store is static: batches
    are created at their state "now" and never move again. With `retention_seconds`, a finished batch disappears
    from lists and retrieves that long after its terminal step, as providers drop old batches.
    """

    def __init__(
        self,
        *,
        enabled: bool,
        clock: Clock,
        seq: itertools.count[int],
        latency_ms: int,
        cache_debug: bool,
        max_batches: int,
        retention_seconds: float | None = None,
    ) -> None:
        self.enabled = enabled
        self._clock = clock
        self._seq = seq
        self._latency_ms = latency_ms
        self._cache_debug = cache_debug
        self._max_batches = max_batches
        self._retention = retention_seconds

    def seed(self, state: ProviderState, n: int, now: float) -> None:
        for _ in range(n):
            total = state.rng.choice(TOTALS)
            recent_scale = state.rng.random()
            scale = 1.0 if recent_scale < 0.4 else state.rng.uniform(5, 300)
            initial, steps = plan_life(state.rng, state.spec.flavor, total, scale)
            created = (
                now - state.rng.uniform(0, 100)
                if recent_scale < 0.4
                else (now - steps[-1].t - state.rng.uniform(60, 6 * 3600))
            )
            self.create(state, created, total, initial, steps)

    def seed_troubled(self, state: ProviderState, now: float, no_progress_fraction: float = 0.5) -> None:
        """The demo's early-warning scenario, as each provider shows it (docs/early-warning.md, "In the demo"):

        - *late*: in its last hour with half its work left (counts creeping on where the provider reports them,
          nothing visible where it reports only at the end): flagged by the early warning, and it expires;
        - *burst* (providers with counts): queued 14 h inside `in_progress`, now running fast: the v2 linear rule
          (rate since the start) flagged it; the recent rate does not, and it completes within half an hour;
        - *never starts*: nothing done, crossing `no_progress_fraction` of its window two minutes from now (the
          threshold until the exporter has calibrated it), expiring at the end of its window.

        Left out where Bifrost shows no `expires_at` (Gemini) or the provider is unsupported."""
        flavor = state.spec.flavor
        if flavor == "gemini" or not state.spec.supported:
            return
        blind = flavor in ("anthropic", "bedrock")  # counts only at the end of the batch
        initial = "in_progress" if flavor == "anthropic" else "validating"
        started = [] if initial == "in_progress" else [Step(600.0, "in_progress", 0, 0)]
        # Late: 23 h into its window, 55 % done at 10 requests a minute (0.05 %): 15 h of work left, 1 h of window.
        total, age = 20_000, DAY - 3600.0
        steps = list(started)
        done_then = 11_000
        if not blind:
            steps.append(Step(age - 1.0, None, done_then - done_then // 50, done_then // 50))
            for minute in range(1, 61):
                done = done_then + 10 * minute
                steps.append(Step(age + 60.0 * minute, None, done - done // 50, done // 50))
        last_done = done_then + 600 if not blind else 11_600
        steps.append(
            Step(DAY + 1.0, "expired", last_done - last_done // 50, last_done // 50, code=EXPIRED_CODE)
        )
        self.create(state, now - age, total, initial, steps, metadata=_demo(flavor, "late"))
        if not blind:
            # Burst: queued 14 h (in_progress, nothing done), running since 3 minutes ago at 2 % every 30 s.
            total, age = 5_000, 14 * 3600.0
            steps = list(started)
            burst = age - 180.0
            for step in range(1, 51):
                done = total * step // 50
                steps.append(Step(burst + 30.0 * step, None, done - done // 100, done // 100))
            end = burst + 30.0 * 50
            done = total
            if flavor not in NO_FINALIZING:
                steps.append(Step(end + 60.0, "finalizing", done - done // 100, done // 100))
            steps.append(Step(end + 180.0, "completed", done - done // 100, done // 100))
            self.create(state, now - age, total, initial, steps, metadata=_demo(flavor, "burst"))
        # Never starts: at risk once no_progress_fraction of its window has passed (two minutes from now).
        created = now - (no_progress_fraction * DAY - 120.0)
        self.create(
            state,
            created,
            500,
            initial,
            [Step(DAY + 1.0, "expired", 0, 0, code=EXPIRED_CODE)],
            metadata=_demo(flavor, "never-starts"),
        )

    def create(
        self,
        state: ProviderState,
        created: float,
        total: int,
        initial: str,
        steps: list[Step],
        *,
        batch_id: str | None = None,
        key: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """A new batch with a planned life (offsets from `created`); returns its id."""
        spec = state.spec
        total, steps = reported_total(initial, total, steps)
        bid = batch_id or new_id(state.rng, spec.flavor)
        while batch_id is None and bid in state.batches:
            bid = new_id(state.rng, spec.flavor)
        batch = skeleton(
            state.rng,
            batch_id=bid,
            provider=spec.name,
            flavor=spec.flavor,
            style=spec.style,
            created=int(created),
            total=total,
            status=initial,
            latency_ms=self._latency_ms,
            cache_debug=self._cache_debug,
        )
        if metadata is not None:
            batch["metadata"] = dict(metadata)
        plan = [step._replace(t=created + step.t) for step in steps]
        seq = next(self._seq)
        if key is None:
            key = state.fill_keys()[state.rng.randrange(len(state.fill_keys()))]
        state.insert(batch, key, seq, plan if self.enabled else None, seq)
        if not self.enabled:
            now = self._clock()
            for step in plan:
                if step.t > now:
                    break
                apply_step(batch, spec.flavor, step)
        return bid

    def advance(self, state: ProviderState, now: float) -> None:
        if not self.enabled:
            return
        spec = state.spec
        created_any = False
        if spec.supported and state.next_create is not None:
            horizon = now - 30.0 * max(1, self._max_batches)
            if state.next_create < horizon:
                state.next_create = horizon
            while state.next_create <= now:
                at = state.next_create
                total = state.rng.choice(TOTALS)
                initial, steps = plan_life(state.rng, spec.flavor, total, 1.0)
                self.create(state, at, total, initial, steps)
                state.next_create = at + state.rng.uniform(10, 30)
                created_any = True
        heap = state.heap
        while heap and heap[0][0] <= now:
            _, _, bid, gen, idx = heapq.heappop(heap)
            meta = state.meta.get(bid)
            if meta is None or meta.gen != gen or meta.plan is None or idx > len(meta.plan):
                continue
            if idx == len(meta.plan):  # the retention event after the last step
                state.remove(bid)
                continue
            step = meta.plan[idx]
            apply_step(state.batches[bid], spec.flavor, step)
            if idx + 1 < len(meta.plan):
                heapq.heappush(heap, (meta.plan[idx + 1].t, next(self._seq), bid, gen, idx + 1))
            elif self._retention is not None and step.status is not None:
                heapq.heappush(heap, (step.t + self._retention, next(self._seq), bid, gen, idx + 1))
        if created_any and len(state.batches) > self._max_batches:
            self.trim(state)

    def trim(self, state: ProviderState) -> None:
        excess = len(state.batches) - self._max_batches
        terminal = [
            (meta.sort_key, bid)
            for bid, meta in state.meta.items()
            if state.batches[bid].get("status") in TERMINAL_STATUSES
        ]
        terminal.sort(reverse=True)  # oldest first: largest (-created, -seq)
        for _, bid in terminal[:excess]:
            state.remove(bid)

    def cancel(self, state: ProviderState, batch: dict[str, Any]) -> bytes | None:
        """A cancel request: `cancelling` now, `cancelled` a little later (the provider drains in-flight work).
        Returns an error body when the batch can no longer be cancelled."""
        status = str(batch.get("status"))
        if status == "cancelling":
            return None
        if status in TERMINAL_STATUSES:
            return error_body(
                400, f"Cannot cancel a batch with status {status!r}.", err_type="invalid_request_error"
            )
        now = self._clock()
        bid = str(batch["id"])
        meta = state.meta[bid]
        meta.gen += 1
        flavor = state.spec.flavor
        counts = batch.get("request_counts") or {}
        completed, failed = int(counts.get("completed", 0)), int(counts.get("failed", 0))
        rest = max(0, int(counts.get("total", 0)) - completed - failed)
        apply_step(batch, flavor, Step(now, "cancelling", completed, failed))
        if self.enabled:
            when = now + state.rng.uniform(5, 20)
            canceled = rest if flavor == "anthropic" else 0
            meta.plan = [Step(when, "cancelled", completed, failed, canceled, 0)]
            heapq.heappush(state.heap, (when, next(self._seq), bid, meta.gen, 0))
        else:
            meta.plan = None
        return None
