"""Device reputation: a decayed Beta posterior over "this device's work is honest", and quarantine.

Why Beta: every signal is evidence for or against the device, with a weight saying how strong.
``good``/``bad`` are decayed evidence counts on top of a Beta(``prior_good``, ``prior_bad``) prior;
the score is the posterior mean ``(good + a0) / (good + bad + a0 + b0)`` in [0, 1]. Decay (half-life,
default 7 days) lets old evidence fade both ways, so a device is judged on recent behaviour.

Weights (defaults) and why:
- failed audit 4.0, signature failure 3.0, model-hash mismatch 3.0: integrity failures. An honest
  device essentially never produces them (the audit's measured false-positive rate is 0), so one
  failed audit quarantines a newcomer (prior 4:1 -> 4/9 = 0.44 < 0.5) while a device with a record
  of clean audits survives a single one (20 clean: 24/29 = 0.83) — and becomes a suspect (for
  ``suspect_window_s``) whose every task is audited, so a real cheater fails again within a few
  tasks.
- clean audit 1.0: verified work.
- unaudited success 0.05, failure 0.25, timeout 0.25: reliability matters but cannot launder
  integrity — a cheater cannot wash out one failed audit with 80 cheap unaudited answers.

Quarantine: a bad signal that leaves the score below ``quarantine_below`` (0.5) quarantines the
device (no new work) for a cool-off (1 h, doubling with each repeat, at most 7 days). After it the
device is on **probation**: it gets work again, every task audited; it is reinstated when clean
audits bring the score to ``release_at`` (0.6: hysteresis, about ten clean audits after two
failures); any bad signal below the threshold quarantines it again, for longer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

from ig3.audit.verdict import gamma_tail_log10


class Signal(str, Enum):
    AUDIT_PASS = "audit_pass"
    AUDIT_FAIL = "audit_fail"
    AUDIT_INCONCLUSIVE = "audit_inconclusive"  # no weight; carries sampled-audit evidence only
    SIGNATURE_FAIL = "signature_fail"
    MODEL_MISMATCH = "model_mismatch"
    TASK_OK = "task_ok"
    TASK_FAILED = "task_failed"
    TIMEOUT = "timeout"


GOOD_SIGNALS = frozenset({Signal.AUDIT_PASS, Signal.TASK_OK, Signal.AUDIT_INCONCLUSIVE})
INTEGRITY_SIGNALS = frozenset({Signal.AUDIT_FAIL, Signal.SIGNATURE_FAIL, Signal.MODEL_MISMATCH})


class Standing(str, Enum):
    GOOD = "good"
    PROBATION = "probation"
    QUARANTINED = "quarantined"


def _default_weights() -> dict[str, float]:
    return {
        Signal.AUDIT_PASS.value: 1.0,
        Signal.AUDIT_FAIL.value: 4.0,
        Signal.SIGNATURE_FAIL.value: 3.0,
        Signal.MODEL_MISMATCH.value: 3.0,
        Signal.AUDIT_INCONCLUSIVE.value: 0.0,
        Signal.TASK_OK.value: 0.05,
        Signal.TASK_FAILED.value: 0.25,
        Signal.TIMEOUT.value: 0.25,
    }


@dataclass(frozen=True)
class ReputationPolicy:
    prior_good: float = 4.0
    prior_bad: float = 1.0
    half_life_s: float = 7 * 86400.0
    quarantine_below: float = 0.5
    release_at: float = 0.6
    suspect_below: float = 0.75  # every task of a device below this is audited
    # ... and of a device whose pooled sampled-audit evidence leans this far toward cheating (an honest
    # device lands here about 5% of the time: it only costs audits, which then clear it).
    suspect_pooled_p: float = 0.05
    suspect_window_s: float = 7 * 86400.0  # ... and of a device with an integrity failure this recent
    newcomer_audits: int = 3  # every task is audited until this many clean audits
    cooloff_s: float = 3600.0
    max_cooloff_s: float = 7 * 86400.0
    weights: dict[str, float] = field(default_factory=_default_weights)

    def __post_init__(self) -> None:
        if not 0 < self.quarantine_below <= self.release_at <= 1:
            raise ValueError("need 0 < quarantine_below <= release_at <= 1")
        if self.prior_good <= 0 or self.prior_bad <= 0 or self.half_life_s <= 0:
            raise ValueError("priors and half-life must be > 0")


@dataclass(frozen=True)
class ReputationState:
    good: float = 0.0
    bad: float = 0.0
    updated_at: float = 0.0
    standing: Standing = Standing.GOOD
    clean_audits: int = 0
    failed_audits: int = 0
    signature_failures: int = 0
    model_mismatches: int = 0
    tasks_ok: int = 0
    tasks_failed: int = 0
    timeouts: int = 0
    quarantines: int = 0
    quarantined_at: float | None = None
    quarantined_until: float | None = None
    reason: str | None = None  # why the last quarantine happened
    last_integrity_failure_at: float | None = None
    inconclusive_audits: int = 0
    # Sampled-output audits pooled across tasks (``ig3.audit.service``): trimmed surprise sum and
    # its positions since the last failed audit. One short sampled answer proves little; many do.
    sampled_surprise: float = 0.0
    sampled_positions: int = 0
    sampled_passes: int = 0  # clean audits in the pool: retracted if the pool convicts the device

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["standing"] = self.standing.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReputationState:
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "standing" in kw:
            kw["standing"] = Standing(kw["standing"])
        return cls(**kw)


_COUNTERS = {
    Signal.AUDIT_PASS: "clean_audits",
    Signal.AUDIT_FAIL: "failed_audits",
    Signal.SIGNATURE_FAIL: "signature_failures",
    Signal.MODEL_MISMATCH: "model_mismatches",
    Signal.TASK_OK: "tasks_ok",
    Signal.TASK_FAILED: "tasks_failed",
    Signal.TIMEOUT: "timeouts",
    Signal.AUDIT_INCONCLUSIVE: "inconclusive_audits",
}


def decayed(state: ReputationState, now: float, policy: ReputationPolicy) -> ReputationState:
    """Evidence decayed to ``now``; a quarantine whose cool-off ended becomes probation."""
    dt = max(0.0, now - state.updated_at) if state.updated_at else 0.0
    f = 0.5 ** (dt / policy.half_life_s)
    out = replace(state, good=state.good * f, bad=state.bad * f, updated_at=now)
    if (
        out.standing is Standing.QUARANTINED
        and out.quarantined_until is not None
        and now >= out.quarantined_until
    ):
        out = replace(out, standing=Standing.PROBATION)
    return out


def score(state: ReputationState, policy: ReputationPolicy, now: float | None = None) -> float:
    s = decayed(state, now, policy) if now is not None else state
    return (s.good + policy.prior_good) / (s.good + s.bad + policy.prior_good + policy.prior_bad)


def standing(state: ReputationState, policy: ReputationPolicy, now: float) -> Standing:
    return decayed(state, now, policy).standing


def is_suspect(state: ReputationState, policy: ReputationPolicy, now: float) -> bool:
    s = decayed(state, now, policy)
    recent_failure = (
        s.last_integrity_failure_at is not None
        and now - s.last_integrity_failure_at < policy.suspect_window_s
    )
    leaning = s.sampled_positions > 0 and gamma_tail_log10(
        s.sampled_positions, s.sampled_surprise
    ) < math.log10(policy.suspect_pooled_p)
    return (
        s.standing is not Standing.GOOD
        or s.clean_audits < policy.newcomer_audits
        or recent_failure
        or leaning
        or score(s, policy) < policy.suspect_below
    )


def apply(
    state: ReputationState,
    signal: Signal,
    now: float,
    policy: ReputationPolicy,
    reason: str | None = None,
    sample: tuple[int, float] | None = None,
) -> tuple[ReputationState, str | None]:
    """Fold one signal in. Returns (new state, transition: ``quarantined`` | ``reinstated`` | ``probation`` | None).

    ``sample``: (positions, trimmed surprise) of a sampled-output audit, pooled until an audit fails."""
    before = state.standing
    s = decayed(state, now, policy)
    transition = "probation" if before is Standing.QUARANTINED and s.standing is Standing.PROBATION else None
    w = policy.weights.get(signal.value, 0.0)
    counter = _COUNTERS[signal]
    if signal in GOOD_SIGNALS:
        s = replace(s, good=s.good + w)
    else:
        s = replace(s, bad=s.bad + w)
    s = replace(s, **{counter: getattr(s, counter) + 1})
    if signal in INTEGRITY_SIGNALS:
        s = replace(s, last_integrity_failure_at=now)
    if signal is Signal.AUDIT_FAIL:
        if sample is not None:
            # A pooled conviction says the pooled answers were cheats too: their clean audits are retracted.
            w_pass = policy.weights.get(Signal.AUDIT_PASS.value, 1.0)
            s = replace(
                s,
                good=max(0.0, s.good - w_pass * s.sampled_passes),
                clean_audits=max(0, s.clean_audits - s.sampled_passes),
            )
        s = replace(s, sampled_surprise=0.0, sampled_positions=0, sampled_passes=0)
    elif sample is not None and signal in (Signal.AUDIT_PASS, Signal.AUDIT_INCONCLUSIVE):
        s = replace(
            s,
            sampled_surprise=s.sampled_surprise + sample[1],
            sampled_positions=s.sampled_positions + sample[0],
            sampled_passes=s.sampled_passes + (1 if signal is Signal.AUDIT_PASS else 0),
        )
    current = score(s, policy)
    if (
        signal not in GOOD_SIGNALS
        and s.standing is not Standing.QUARANTINED
        and current < policy.quarantine_below
    ):
        cool = min(policy.cooloff_s * (2**s.quarantines), policy.max_cooloff_s)
        s = replace(
            s,
            standing=Standing.QUARANTINED,
            quarantines=s.quarantines + 1,
            quarantined_at=now,
            quarantined_until=now + cool,
            reason=reason or signal.value,
        )
        return s, "quarantined"
    if s.standing is Standing.PROBATION and signal is Signal.AUDIT_PASS and current >= policy.release_at:
        return replace(s, standing=Standing.GOOD), "reinstated"
    return s, transition


def audits_to_reinstate(state: ReputationState, policy: ReputationPolicy, now: float) -> int:
    """How many clean audits (no decay) bring the score to ``release_at``."""
    s = decayed(state, now, policy)
    need = (
        policy.release_at * (s.good + s.bad + policy.prior_good + policy.prior_bad)
        - s.good
        - policy.prior_good
    )
    w = policy.weights[Signal.AUDIT_PASS.value]
    return max(0, math.ceil(need / ((1 - policy.release_at) * w) - 1e-9))
