"""Scripted scenarios: a seeded list of batches whose terminal transitions are known in advance.

A test that wants to prove the exporter counted *exactly* what happened (across restarts, kills, faults) needs a
gateway whose history is a ground truth rather than a random walk: `build_script` draws one from a seed,
`Simulator.play` plays it out against the simulator's clock (real time, or an injected accelerated one), and
`Script.finished` / `Script.failures` say what an exporter must end up counting, in the exporter's spelling
(Anthropic's finished state is `ended`; Azure's `canceled` is `cancelled`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .flavors import DAY, EXPIRED_CODE, FAILURE_CODES, NO_FINALIZING, OPENAI_SHAPED, ProviderSpec, Step

__all__ = ["Script", "ScriptedBatch", "build_script"]

_OUTCOMES = ("completed", "failed", "expired", "cancelled")
_WEIGHTS = (50.0, 20.0, 15.0, 15.0)


@dataclass(frozen=True)
class ScriptedBatch:
    """One batch of a script; every time is seconds from the script's start (negative: before it)."""

    provider: str
    flavor: str
    batch_id: str
    created: float
    total: int
    initial: str
    steps: tuple[Step, ...]
    outcome: str  # canonical terminal status
    finish: float  # when the terminal step happens
    code: str | None  # errors.data[].code it carries when failed or expired (None: it carries no errors)
    key: int | None = None

    @property
    def reported_status(self) -> str:
        """The terminal status as the exporter reports it."""
        return "ended" if self.flavor == "anthropic" else self.outcome


@dataclass(frozen=True)
class Script:
    batches: tuple[ScriptedBatch, ...]
    duration: float

    def finished(self) -> Counter[tuple[str, str]]:
        """Terminal transitions by (provider, status): what `bifrost_batch_finished_total` must add up to."""
        return Counter((b.provider, b.reported_status) for b in self.batches)

    def failures(self) -> Counter[tuple[str, str, str]]:
        """Failed and expired batches by (provider, status, code), `none` for a batch without errors: what
        `bifrost_batch_failures_total` must add up to."""
        out: Counter[tuple[str, str, str]] = Counter()
        for b in self.batches:
            if b.reported_status in ("failed", "expired"):
                out[(b.provider, b.reported_status, b.code or "none")] += 1
        return out

    def finish_times(self) -> list[tuple[float, str, str]]:
        """(offset, provider, batch id) of every terminal step, earliest first."""
        return sorted((b.finish, b.provider, b.batch_id) for b in self.batches)


def build_script(
    specs: Sequence[ProviderSpec],
    *,
    seed: int,
    batches: int,
    duration: float,
    first_finish: float = 5.0,
) -> Script:
    """`batches` batches spread over the providers, each finishing between `first_finish` and `duration`
    seconds after the start, none before: an exporter started before the script sees every transition happen.
    Lives follow each flavour (no finalizing for Anthropic, expired batches expire at the end of their 24 h)."""
    if not specs:
        raise ValueError("a script needs at least one provider")
    if not 0 <= first_finish < duration:
        raise ValueError("need 0 <= first_finish < duration")
    rng = random.Random(f"script:{seed}")
    out: list[ScriptedBatch] = []
    for n in range(batches):
        spec = specs[n % len(specs)]
        outcome = rng.choices(_OUTCOMES, _WEIGHTS)[0]
        finish = round(rng.uniform(first_finish, duration), 3)
        total = rng.choice((10, 50, 100, 250, 1000))
        # An expired batch ends when its 24 h window does; the others ran for a few minutes.
        created = finish - DAY if outcome == "expired" else finish - rng.uniform(30.0, 600.0)
        out.append(_life(rng, spec, n, outcome, created, finish, total))
    return Script(tuple(out), duration)


def _life(
    rng: random.Random, spec: ProviderSpec, n: int, outcome: str, created: float, finish: float, total: int
) -> ScriptedBatch:
    flavor = spec.flavor
    anthropic = flavor == "anthropic"
    running = created + (finish - created) * 0.1
    initial = "in_progress" if flavor in ("anthropic", "gemini") else "validating"
    steps: list[Step] = []
    if initial == "validating":
        steps.append(Step(running, "in_progress", 0, 0))
    share = 1.0 if outcome == "completed" else rng.uniform(0.2, 0.8)
    processed = int(total * share)
    failed = processed // 20 if outcome != "failed" else processed // 2
    done = processed - failed
    steps.append(Step((running + finish) / 2, None, done // 2, failed // 2))
    steps.append(Step(finish - 2.0, None, done, failed))
    rest = total - done - failed
    code: str | None = None
    if outcome == "completed":
        if flavor not in NO_FINALIZING:
            steps.append(Step(finish - 1.0, "finalizing", done, failed))
        steps.append(Step(finish, "completed", done, failed))
    elif outcome == "failed":
        code = rng.choice(sorted(FAILURE_CODES)) if flavor in OPENAI_SHAPED else None
        steps.append(Step(finish, "failed", done, failed + rest, code=code))
    elif outcome == "expired":
        code = EXPIRED_CODE if flavor in OPENAI_SHAPED else None
        steps.append(Step(finish, "expired", done, failed, 0, rest if anthropic else 0, code=code))
    else:
        steps.append(Step(finish - 1.0, "cancelling", done, failed))
        steps.append(Step(finish, "cancelled", done, failed, rest if anthropic else 0, 0))
    batch_id = _script_id(flavor, n)
    return ScriptedBatch(
        provider=spec.name,
        flavor=flavor,
        batch_id=batch_id,
        created=created,
        total=total,
        initial=initial,
        steps=tuple(steps),
        outcome=outcome,
        finish=finish,
        code=code,
    )


def _script_id(flavor: str, n: int) -> str:
    """Recognisable ids in the flavour's format, so a failing test names the batch it is about."""
    if flavor == "anthropic":
        return f"msgbatch_script{n:06d}"
    if flavor == "gemini":
        return f"batches/script{n:06d}"
    if flavor == "bedrock":
        return f"arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/script{n:06d}"
    if flavor == "vertex":
        return f"projects/123456789012/locations/us-central1/batchPredictionJobs/9{n:08d}"
    return f"batch_script{n:06d}"
