"""Benchmark: does the at-risk rule warn early about the batches that will expire, and only about them?

A simulated day of batches (fixed seed; time accelerated: pure computation over synthetic lifecycles, no clock) is
evaluated every rule-evaluation interval with two rules, per batch:

- ``ExpiringSoon`` (the baseline, today's alert): fires for every active batch in the last hour before its
  ``expires_at`` (``next_expiry - time() < 3600``, ``for: 5m``);
- ``at risk``: :func:`exporter.risk.assess` on the batch as the gateway would show it at that moment (built through
  the real :class:`exporter.models.Batch` model), ``for: 10m`` as the mixin ships it, and once more without ``for``.

Each batch gets a 24 h window, a start delay and a processing rate that may slow down, stall, or speed up late
(the case no projection can foresee). The mix of behaviours below is an assumption written down before the first
run, not measured from a real gateway, and it is not tuned to this seed: the figures say how the rule behaves on
such a mix, not how often real batches expire.

Printed per rule: the lead time before expiry of every batch that expired (median and worst, also as a fraction of
its window), the batches that expired unflagged, and the false alarms (batches flagged that finished in time), the
latter as a ratio against ExpiringSoon measured in the same run, with how long a false alarm keeps firing. Also: the cost of one ``assess`` call against
``outcomes()``, which the snapshot already runs for every batch.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.common import Report, parser
from exporter.models import Batch, normalize_status
from exporter.outcomes import outcomes
from exporter.risk import assess

HOUR = 3600.0
WINDOW = 24 * HOUR
DAY_START = 1_750_000_000.0
SEED = 20261130
FRACTION = 0.5  # risk_no_progress_fraction's default
EXPIRING_SOON_SECONDS = HOUR
ACTIVE = frozenset({"validating", "in_progress", "finalizing", "cancelling"})

# Behaviour mix (share of batches). Decided before the first run; see the module docstring.
KINDS: tuple[tuple[str, float], ...] = (
    ("steady", 0.55),  # short queue, log-normal processing time (median 2.5 h)
    ("slows down", 0.15),  # part-way through, the provider's rate drops 2-20x
    ("stalls", 0.08),  # part-way through, no progress for an exponential time (mean 8 h), then resumes
    ("late start", 0.07),  # queued 4-20 h before it starts, then steady
    ("never starts", 0.03),  # stays in validating until it expires
    ("speeds up", 0.07),  # slow for 2-10 h (on course for ~40 h), then 4-12x faster: the rule cannot know
    ("near the edge", 0.05),  # steady, but its processing takes 16-30 h: some make it, some do not
)


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """One synthetic batch: piecewise-constant processing rate (fraction of the batch per second) from its start."""

    id: str
    kind: str
    created: float
    started: float | None
    breaks: tuple[float, ...]  # times the rate changes, breaks[0] == started
    rates: tuple[float, ...]
    total: int
    gemini: bool  # reports an integer `progress` percent instead of request counts
    finalize_seconds: float
    done_at: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "done_at", self._time_to_fraction(1.0))

    @property
    def expires(self) -> float:
        return self.created + WINDOW

    @property
    def expired(self) -> bool:
        return self.done_at > self.expires

    @property
    def end(self) -> float:
        """When the batch turns terminal: completed after finalizing, or expired."""
        return self.done_at + self.finalize_seconds if not self.expired else self.expires

    def _time_to_fraction(self, target: float) -> float:
        if self.started is None:
            return math.inf
        reached = 0.0
        for i, (t0, rate) in enumerate(zip(self.breaks, self.rates, strict=True)):
            t1 = self.breaks[i + 1] if i + 1 < len(self.breaks) else math.inf
            if rate > 0 and reached + rate * (t1 - t0) >= target:
                return t0 + (target - reached) / rate
            reached += rate * (t1 - t0) if t1 < math.inf else 0.0
        return math.inf

    def fraction(self, t: float) -> float:
        if self.started is None or t <= self.started:
            return 0.0
        reached = 0.0
        for i, (t0, rate) in enumerate(zip(self.breaks, self.rates, strict=True)):
            t1 = self.breaks[i + 1] if i + 1 < len(self.breaks) else math.inf
            if t < t1:
                return min(1.0, reached + rate * (t - t0))
            reached += rate * (t1 - t0)
        return min(1.0, reached)

    def as_gateway_shows_it(self, t: float) -> dict[str, Any]:
        """The batch object a retrieve at time `t` would return (integer Unix seconds, as Bifrost sends them)."""
        doc: dict[str, Any] = {
            "id": self.id,
            "created_at": int(self.created),
            "expires_at": int(self.expires),
            "completion_window": "24h",
        }
        done = math.floor(self.total * self.fraction(t))
        if self.started is None or t < self.started:
            doc["status"] = "validating"
        else:
            doc["in_progress_at"] = int(self.started)
            doc["status"] = "in_progress" if t < self.done_at else "finalizing"
            if t >= self.done_at:
                doc["finalizing_at"] = int(self.done_at)
                done = self.total
        if self.gemini:
            doc["request_counts"] = {"total": self.total}
            doc["progress"] = done * 100 // self.total
        else:
            failed = done // 50  # 2 % of finished requests fail: done counts both
            doc["request_counts"] = {"total": self.total, "completed": done - failed, "failed": failed}
        return doc


def _steady_seconds(rng: random.Random) -> float:
    return rng.lognormvariate(math.log(2.5 * HOUR), 1.0)


def make_lifecycle(rng: random.Random, index: int) -> Lifecycle:
    kind = rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS])[0]
    created = DAY_START + rng.uniform(0.0, WINDOW)
    total = round(math.exp(rng.uniform(math.log(10), math.log(50_000))))
    gemini = rng.random() < 1 / 3
    finalize = min(rng.expovariate(1 / 600.0), 2 * HOUR)
    queue = rng.expovariate(1 / (15 * 60.0))
    started: float | None = created + queue
    breaks: list[float] = []
    rates: list[float] = []
    if kind == "never starts":
        started = None
    elif kind == "late start":
        started = created + rng.uniform(4 * HOUR, 20 * HOUR)
        breaks, rates = [started], [1 / _steady_seconds(rng)]
    elif kind == "slows down":
        rate = 1 / _steady_seconds(rng)
        at = rng.uniform(0.1, 0.7)
        assert started is not None
        change = started + at / rate
        breaks, rates = [started, change], [rate, rate / rng.uniform(2, 20)]
    elif kind == "stalls":
        rate = 1 / _steady_seconds(rng)
        assert started is not None
        stall = started + rng.uniform(0.0, 0.8) / rate
        resume = stall + rng.expovariate(1 / (8 * HOUR))
        breaks, rates = [started, stall, resume], [rate, 0.0, rate]
    elif kind == "speeds up":
        slow = 1 / rng.lognormvariate(math.log(40 * HOUR), 0.3)
        assert started is not None
        change = started + rng.uniform(2 * HOUR, 10 * HOUR)
        breaks, rates = [started, change], [slow, slow * rng.uniform(4, 12)]
    elif kind == "near the edge":
        assert started is not None
        breaks, rates = [started], [1 / rng.uniform(16 * HOUR, 30 * HOUR)]
    else:
        assert started is not None
        breaks, rates = [started], [1 / _steady_seconds(rng)]
    return Lifecycle(
        f"batch_{index:05d}", kind, created, started, tuple(breaks), tuple(rates), total, gemini, finalize
    )


Condition = Callable[[Lifecycle, Batch, str, float], bool]


@dataclass(slots=True)
class Rule:
    """One alert rule evaluated per batch: fires once `condition` has held for `hold` seconds (`for:`)."""

    name: str
    hold: float
    condition: Condition
    first_fired: dict[str, float] = field(default_factory=dict)
    firing_seconds: dict[str, float] = field(default_factory=dict)  # per batch, how long the alert was firing


def expiring_soon(lc: Lifecycle, batch: Batch, status: str, now: float) -> bool:
    return status in ACTIVE and lc.expires - now < EXPIRING_SOON_SECONDS


def at_risk(fraction: float) -> Condition:
    def condition(lc: Lifecycle, batch: Batch, status: str, now: float) -> bool:
        return assess(batch, status, now, fraction).at_risk

    return condition


def simulate(lifecycles: Sequence[Lifecycle], rules: Sequence[Rule], step: float) -> int:
    """Evaluate every rule on every active batch at every evaluation time; returns the evaluations made.

    Rules that share a condition (the same rule with another `for:`) share its evaluation.
    """
    conditions = list(dict.fromkeys(rule.condition for rule in rules))
    which = [conditions.index(rule.condition) for rule in rules]
    evaluations = 0
    for lc in lifecycles:
        t = math.ceil(lc.created / step) * step
        since: list[float | None] = [None] * len(rules)
        while t < lc.end:
            batch = Batch.model_validate(lc.as_gateway_shows_it(t))
            status = normalize_status(batch.status)
            evaluations += 1
            held = [condition(lc, batch, status, t) for condition in conditions]
            for i, rule in enumerate(rules):
                if not held[which[i]]:
                    since[i] = None
                    continue
                start = since[i]
                if start is None:
                    since[i] = start = t
                if t - start >= rule.hold:
                    rule.first_fired.setdefault(lc.id, t)
                    rule.firing_seconds[lc.id] = rule.firing_seconds.get(lc.id, 0.0) + step
            t += step
    return evaluations


@dataclass(frozen=True, slots=True)
class Quality:
    expired: int
    flagged_expired: int
    median_lead_hours: float | None
    worst_lead_hours: float | None
    median_lead_of_window: float | None
    false_alarms: int
    finished_in_time: int
    false_alarm_median_hours: float | None  # how long a false alarm fires, per falsely flagged batch

    @property
    def missed(self) -> int:
        return self.expired - self.flagged_expired


def quality(rule: Rule, lifecycles: Sequence[Lifecycle]) -> Quality:
    leads = [
        lc.expires - rule.first_fired[lc.id] for lc in lifecycles if lc.expired and lc.id in rule.first_fired
    ]
    expired = sum(1 for lc in lifecycles if lc.expired)
    false_alarms = [
        rule.firing_seconds[lc.id] / HOUR for lc in lifecycles if not lc.expired and lc.id in rule.first_fired
    ]
    return Quality(
        expired=expired,
        flagged_expired=len(leads),
        median_lead_hours=statistics.median(leads) / HOUR if leads else None,
        worst_lead_hours=min(leads) / HOUR if leads else None,
        median_lead_of_window=statistics.median(leads) / WINDOW if leads else None,
        false_alarms=len(false_alarms),
        finished_in_time=len(lifecycles) - expired,
        false_alarm_median_hours=statistics.median(false_alarms) if false_alarms else None,
    )


def _hours(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} h"


def per_call_seconds(fn: Callable[[], object], calls: int, rounds: int) -> float:
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def cost_table(report: Report, lifecycles: Sequence[Lifecycle], smoke: bool) -> None:
    """assess() on a mid-day snapshot of the active batches, against outcomes() on the same batches."""
    now = DAY_START + WINDOW / 2
    active = [
        (b, normalize_status(b.status))
        for b in (
            Batch.model_validate(lc.as_gateway_shows_it(now))
            for lc in lifecycles
            if lc.created <= now < lc.end
        )
    ]
    if not active:
        return
    rounds = 3 if smoke else 15

    def with_outcomes() -> None:
        for b, s in active:
            outcomes(b.request_counts, s)

    def with_assess() -> None:
        for b, s in active:
            assess(b, s, now, FRACTION)

    base = per_call_seconds(with_outcomes, 5, rounds) / len(active)
    cost = per_call_seconds(with_assess, 5, rounds) / len(active)
    report.table(
        f"Cost per active batch per poll ({len(active):,} active batches at mid-day; best of {rounds} rounds)",
        ["call", "µs per batch", "vs outcomes()"],
        [
            ["outcomes() (baseline: the snapshot already runs it)", base * 1e6, "1.00×"],
            ["assess() (outcomes + the projection)", cost * 1e6, f"{cost / base:.2f}×"],
        ],
    )


def quality_row(name: str, q: Quality, baseline: int) -> list[object]:
    return [
        name,
        f"{q.flagged_expired}/{q.expired}",
        q.missed,
        _hours(q.median_lead_hours),
        "n/a" if q.median_lead_of_window is None else f"{q.median_lead_of_window:.2f}",
        _hours(q.worst_lead_hours),
        f"{q.false_alarms}/{q.finished_in_time}",
        f"{q.false_alarms / baseline:.1f}×" if baseline else "n/a",
        _hours(q.false_alarm_median_hours),
    ]


QUALITY_HEADER = [
    "rule",
    "expired flagged",
    "missed",
    "median lead",
    "median lead / window",
    "worst lead",
    "false alarms (finished in time)",
    "false alarms vs ExpiringSoon",
    "false alarm fires for (median)",
]


def main() -> int:
    p = parser(__doc__ or "")
    p.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    args = p.parse_args()
    started = time.perf_counter()
    report = Report("alert_quality", args.smoke)
    n, step = (150, 600.0) if args.smoke else (2000, 60.0)
    rng = random.Random(args.seed)
    lifecycles = [make_lifecycle(rng, i) for i in range(n)]
    default, early, late = at_risk(FRACTION), at_risk(0.25), at_risk(0.75)
    rules = [
        Rule("ExpiringSoon (baseline: last hour, for 5m)", 300.0, expiring_soon),
        Rule("at risk (for 10m, as the mixin ships it)", 600.0, default),
        Rule("at risk (every evaluation, no for)", 0.0, default),
    ]
    tradeoffs = [
        Rule("at risk, for 1h", HOUR, default),
        Rule("at risk, for 2h", 2 * HOUR, default),
        Rule("at risk, risk_no_progress_fraction 0.25 (for 10m)", 600.0, early),
        Rule("at risk, risk_no_progress_fraction 0.75 (for 10m)", 600.0, late),
    ]
    evaluations = simulate(lifecycles, rules + tradeoffs, step)
    results = [quality(rule, lifecycles) for rule in rules]
    baseline = results[0].false_alarms
    expired = results[0].expired
    report.table(
        f"Alert quality: {n:,} batches created over one day (24 h windows, seed {args.seed}), "
        f"{expired} expired; rules evaluated every {step:.0f} s ({evaluations:,} batch evaluations)",
        QUALITY_HEADER,
        [quality_row(rule.name, q, baseline) for rule, q in zip(rules, results, strict=True)],
    )
    kind_rows: list[list[object]] = []
    gated = rules[1]
    for kind, _ in KINDS:
        members = [lc for lc in lifecycles if lc.kind == kind]
        kind_rows.append(
            [
                kind,
                len(members),
                sum(1 for lc in members if lc.expired),
                sum(1 for lc in members if lc.expired and lc.id in gated.first_fired),
                sum(1 for lc in members if not lc.expired and lc.id in gated.first_fired),
                sum(1 for lc in members if not lc.expired and lc.id in rules[0].first_fired),
            ]
        )
    report.table(
        "Where the alarms come from, by behaviour (at risk with for 10m; ExpiringSoon for comparison)",
        ["behaviour", "batches", "expired", "expired flagged", "false alarms", "ExpiringSoon false alarms"],
        kind_rows,
    )
    report.table(
        "Trade-offs: the same day with a longer for: or another risk_no_progress_fraction (not the shipped defaults)",
        QUALITY_HEADER,
        [quality_row(rule.name, quality(rule, lifecycles), baseline) for rule in tradeoffs],
    )
    cost_table(report, lifecycles, args.smoke)
    ours = results[1]
    report.note(
        "false alarm = flagged at least once and finished in time; lead = expires_at minus the first time the rule "
        "fired. Per batch: the shipped alerts aggregate by provider, so they fire whenever the per-batch rule does, "
        "and one firing alert may stand for several batches."
    )
    if not args.smoke:
        report.check(
            "expiring batches flagged by at risk",
            float(ours.missed),
            "0 missed",
            ours.missed == 0,
            f"{ours.flagged_expired}/{ours.expired} flagged, {ours.missed} missed",
        )
        lead = ours.median_lead_of_window or 0.0
        report.check(
            "median lead before expiry",
            lead,
            "≥ 0.25 of the window",
            lead >= 0.25,
            f"{_hours(ours.median_lead_hours)} = {lead:.2f} of the 24 h window",
        )
        report.check(
            "false alarms vs ExpiringSoon",
            float(ours.false_alarms),
            f"< {baseline} (ExpiringSoon's)",
            ours.false_alarms < baseline,
            f"{ours.false_alarms} vs {baseline}",
        )
    report.finish(args.json, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
