"""Judging a re-scored output: pass, fail, or undecided (then regenerate).

Inputs are the statistics of one auditor forward pass (``ig3_edge.scoring.ScoreReport``).
Thresholds and why:

- **Greedy** (temperature 0): an honest run's claimed tokens are the model's top choices at every
  position, up to near-ties and the rare position where the canonical re-tokenization of the text
  differs from the tokens the device emitted. ``greedy_pass_rate`` (default 5%, at least one
  position) is that allowance; at ``greedy_fail_rate`` (default 25%) mismatches are far beyond
  anything honest (measured: 0 mismatches over SmolLM2's honest outputs; a 0.5M-parameter stand-in
  or random text miss 70-100% of positions). In between, regenerate.
- **Sampled** (temperature > 0): the surprise sum ``S = sum -log(1 - u)`` over n positions is
  Gamma(n, 1) for an honest sampler (``ig3_edge.scoring``), so its exact tail
  ``p = P(Gamma(n, 1) >= S)`` is how likely an honest run is to look at least this surprising.
  ``p >= sampled_pass_p`` (1e-3) passes, ``p <= sampled_fail_p`` (1e-6: about one false failure
  per million honest audits) fails, between is undecided. Before testing, the most surprising
  ``trim_fraction`` (10%, at least one) of the positions are dropped: canonical re-tokenization
  of honest sampled text sometimes merges the pieces the sampler emitted into a token the model
  finds improbable (``ig3_edge.scoring``). Dropping the largest values of a Gamma(n) sum and
  testing the rest against Gamma(n - k) is conservative (honest p-values only grow). Tokens
  outside the top-p nucleus are impossible for an honest sampler, yet one re-tokenized merge
  ("S" + "mall" -> "Small") can push two neighbouring positions out (measured on SmolLM2 at
  T=0.7, top_p=0.9): a few left after the trim make the audit undecided (regenerate: exact for a
  seeded run; inconclusive otherwise), more than ``nucleus_fail_fraction`` (25%) fail it.
- Undecided + sampled without a seed: regeneration cannot reproduce a random draw, so the audit is
  ``inconclusive`` (no reputation change; the device stays on the audit list).
- Too little evidence (fewer than ``min_tokens`` positions) passes: a 1-token answer proves little
  either way, and failing honest devices on it would cost more than the work is worth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Verdict(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    UNDECIDED = "undecided"  # re-scoring cannot tell: regenerate
    INCONCLUSIVE = "inconclusive"  # nothing more can tell (sampled, no seed)


@dataclass(frozen=True)
class RescoreEvidence:
    """One auditor forward pass over prompt + claimed output (mirrors ``ig3_edge.scoring.ScoreReport``)."""

    model_hash: str
    prompt_tokens: int
    output_tokens: int
    greedy_mismatches: int
    log_likelihood: float
    surprise: float
    surprise_positions: int
    outside_nucleus: int
    surprises: tuple[float, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    duration_ms: float = 0.0

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> RescoreEvidence:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def trimmed(self, fraction: float) -> tuple[int, float, int]:
        """(positions kept, their surprise sum, positions outside the nucleus that survived the trim)."""
        values = sorted(self.surprises)
        k = max(1, math.floor(fraction * len(values))) if values else 0
        kept = values[: len(values) - k]
        finite = [v for v in kept if math.isfinite(v)]
        return len(finite), float(sum(finite)), len(kept) - len(finite)

    def log10_p(self, trim_fraction: float = 0.1) -> float:
        """log10 P(Gamma(n - k, 1) >= trimmed surprise): how likely an honest sampler looks this surprising."""
        n, total, _ = self.trimmed(trim_fraction)
        return gamma_tail_log10(n, total)


def gamma_tail_log10(n: int, x: float) -> float:
    """log10 P(X >= x) for X ~ Gamma(n, 1), n a positive integer: e^-x sum_{k<n} x^k / k!, in log space."""
    if n <= 0 or x <= 0:
        return 0.0
    terms = [k * math.log(x) - math.lgamma(k + 1) for k in range(n)]
    m = max(terms)
    log_p = -x + m + math.log(sum(math.exp(t - m) for t in terms))
    return min(0.0, log_p / math.log(10))


@dataclass(frozen=True)
class VerdictPolicy:
    greedy_pass_rate: float = 0.05
    greedy_fail_rate: float = 0.25
    sampled_pass_p: float = 1e-3
    sampled_fail_p: float = 1e-6
    trim_fraction: float = 0.1  # most surprising positions dropped before the sampled test
    nucleus_fail_fraction: float = 0.25  # more positions outside the nucleus than this (after the trim) fail
    min_tokens: int = 2

    def __post_init__(self) -> None:
        if not 0 <= self.greedy_pass_rate <= self.greedy_fail_rate <= 1:
            raise ValueError("need 0 <= greedy_pass_rate <= greedy_fail_rate <= 1")
        if not 0 < self.sampled_fail_p <= self.sampled_pass_p < 1:
            raise ValueError("need 0 < sampled_fail_p <= sampled_pass_p < 1")


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str
    score: float  # greedy: mismatch rate; sampled: log10 p


def judge(ev: RescoreEvidence, policy: VerdictPolicy = VerdictPolicy()) -> Judgement:
    n = ev.output_tokens
    if n < policy.min_tokens:
        return Judgement(Verdict.PASS, f"only {n} token(s) to check", 0.0)
    if ev.temperature == 0:
        rate = ev.greedy_mismatches / n
        allowed = max(1, math.floor(policy.greedy_pass_rate * n))
        if ev.greedy_mismatches <= allowed and rate < policy.greedy_fail_rate:
            return Judgement(
                Verdict.PASS, f"greedy: {ev.greedy_mismatches}/{n} positions not the top choice", rate
            )
        if rate >= policy.greedy_fail_rate:
            return Judgement(
                Verdict.FAIL,
                f"greedy: {ev.greedy_mismatches}/{n} claimed tokens are not the " f"model's top choice",
                rate,
            )
        return Judgement(
            Verdict.UNDECIDED, f"greedy: {ev.greedy_mismatches}/{n} mismatches, regenerate", rate
        )
    _kept, _total, outside_kept = ev.trimmed(policy.trim_fraction)
    lp = ev.log10_p(policy.trim_fraction)
    if outside_kept > max(1, math.floor(policy.nucleus_fail_fraction * n)):
        return Judgement(
            Verdict.FAIL, f"sampled: {ev.outside_nucleus}/{n} tokens outside the top-p nucleus", lp
        )
    if outside_kept > 0:
        return Judgement(
            Verdict.UNDECIDED,
            f"sampled: {ev.outside_nucleus}/{n} tokens outside the top-p nucleus (re-tokenization or not "
            f"the model's work): regenerate",
            lp,
        )
    if lp >= math.log10(policy.sampled_pass_p):
        return Judgement(Verdict.PASS, f"sampled: surprise p=10^{lp:.1f}, within an honest run's range", lp)
    if lp <= math.log10(policy.sampled_fail_p):
        return Judgement(
            Verdict.FAIL,
            f"sampled: surprise p=10^{lp:.1f}; an honest sampler almost never "
            f"produces text this unlikely",
            lp,
        )
    return Judgement(Verdict.UNDECIDED, f"sampled: surprise p=10^{lp:.1f} in the grey zone", lp)


def judge_regeneration(claimed: str, regenerated: str, *, temperature: float, seed: int | None) -> Judgement:
    """Regeneration reproduces greedy runs and seeded sampled runs exactly; anything else proves nothing."""
    if temperature > 0 and seed is None:
        return Judgement(
            Verdict.INCONCLUSIVE, "sampled without a seed: regeneration cannot reproduce it", 0.0
        )
    if claimed == regenerated:
        return Judgement(Verdict.PASS, "regenerated output is identical", 1.0)
    common = 0
    for a, b in zip(claimed, regenerated):
        if a != b:
            break
        common += 1
    frac = common / max(len(claimed), len(regenerated), 1)
    return Judgement(Verdict.FAIL, f"regenerated output differs after {common} characters", frac)
