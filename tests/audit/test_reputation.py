"""Pure audit core: reputation math, sampling policy, verdict thresholds (no models, no I/O)."""

from __future__ import annotations

import math

import pytest

from ig3.audit import reputation as rep
from ig3.audit.policy import AuditPolicy
from ig3.audit.verdict import RescoreEvidence, Verdict, gamma_tail_log10, judge, judge_regeneration

P = rep.ReputationPolicy()


def fold(state, signals, now=1000.0, step=1.0):
    transitions = []
    for s in signals:
        state, t = rep.apply(state, s, now, P)
        transitions.append(t)
        now += step
    return state, transitions


def test_newcomer_is_quarantined_by_one_failed_audit_and_established_device_survives_one():
    state, tr = fold(rep.ReputationState(), [rep.Signal.AUDIT_FAIL])
    assert tr == ["quarantined"] and state.standing is rep.Standing.QUARANTINED
    assert rep.score(state, P) == pytest.approx(4 / 9)
    veteran, _ = fold(rep.ReputationState(), [rep.Signal.AUDIT_PASS] * 20)
    veteran, tr = fold(veteran, [rep.Signal.AUDIT_FAIL], now=1100.0)
    assert tr == [None] and veteran.standing is rep.Standing.GOOD
    # ...but it is now a suspect: every task of it gets audited.
    assert rep.is_suspect(veteran, P, 1101.0)


def test_signature_failures_and_model_mismatches_quarantine_a_newcomer_on_the_second():
    for sig in (rep.Signal.SIGNATURE_FAIL, rep.Signal.MODEL_MISMATCH):
        state, tr = fold(rep.ReputationState(), [sig, sig])
        assert tr == [None, "quarantined"], sig


def test_cheap_successes_cannot_launder_a_failed_audit():
    state, _ = fold(rep.ReputationState(), [rep.Signal.AUDIT_PASS] * 5 + [rep.Signal.AUDIT_FAIL])
    before = rep.score(state, P)
    state, _ = fold(state, [rep.Signal.TASK_OK] * 40, now=2000.0)
    assert rep.score(state, P) - before < 0.1
    assert rep.is_suspect(state, P, 3000.0)


def test_probation_after_cooloff_then_reinstated_by_clean_audits_and_repeat_quarantine_is_longer():
    state, _ = fold(rep.ReputationState(), [rep.Signal.AUDIT_FAIL, rep.Signal.AUDIT_FAIL])
    assert state.standing is rep.Standing.QUARANTINED
    until = state.quarantined_until
    assert until == pytest.approx(1000.0 + P.cooloff_s)
    assert rep.standing(state, P, until - 1) is rep.Standing.QUARANTINED
    assert rep.standing(state, P, until + 1) is rep.Standing.PROBATION
    need = rep.audits_to_reinstate(state, P, until + 1)
    assert 5 <= need <= 15
    state, tr = fold(state, [rep.Signal.AUDIT_PASS] * need, now=until + 1)
    assert tr[0] == "probation" and tr[-1] == "reinstated" and state.standing is rep.Standing.GOOD
    assert all(t is None for t in tr[1:-1])
    # Cheating again: quarantined again, for twice as long.
    state, tr = fold(state, [rep.Signal.AUDIT_FAIL] * 3, now=until + 100)
    assert "quarantined" in tr
    assert state.quarantined_until - state.quarantined_at == pytest.approx(2 * P.cooloff_s)


def test_evidence_decays_with_the_half_life():
    state, _ = fold(rep.ReputationState(), [rep.Signal.AUDIT_PASS] * 10 + [rep.Signal.AUDIT_FAIL])
    later = rep.decayed(state, state.updated_at + P.half_life_s, P)
    assert later.good == pytest.approx(state.good / 2) and later.bad == pytest.approx(state.bad / 2)


def test_state_round_trips_through_a_dict():
    state, _ = fold(rep.ReputationState(), [rep.Signal.AUDIT_PASS, rep.Signal.TIMEOUT])
    assert rep.ReputationState.from_dict(state.as_dict()) == state


def test_sampling_is_deterministic_keyed_and_near_the_rate():
    policy = AuditPolicy(rate=0.05, secret=b"s1")
    ids = [f"tsk_{i:08d}" for i in range(20000)]
    picked = [i for i in ids if policy.sampled(i)]
    assert 0.04 < len(picked) / len(ids) < 0.06
    assert picked == [i for i in ids if policy.sampled(i)]  # redelivery decides the same
    other = {i for i in ids if AuditPolicy(rate=0.05, secret=b"s2").sampled(i)}
    assert len(other & set(picked)) < len(picked) / 4  # unpredictable without the key
    assert policy.decide("tsk_x", suspect=True) == "suspect"
    assert AuditPolicy(rate=0.0).decide("tsk_x", suspect=False) is None
    with pytest.raises(ValueError):
        AuditPolicy(rate=1.5)


def test_gamma_tail_matches_closed_forms():
    assert gamma_tail_log10(1, 3.0) == pytest.approx(-3.0 / math.log(10))  # P(Exp(1) >= 3) = e^-3
    # n = 2: e^-x (1 + x)
    assert gamma_tail_log10(2, 5.0) == pytest.approx(math.log10(math.exp(-5) * 6))
    assert gamma_tail_log10(30, 30.0) > math.log10(0.4)  # the mean is unremarkable
    assert gamma_tail_log10(30, 120.0) < -20


def _ev(**kw):
    base = dict(
        model_hash="h",
        prompt_tokens=10,
        output_tokens=20,
        greedy_mismatches=0,
        log_likelihood=-5.0,
        surprise=20.0,
        surprise_positions=20,
        outside_nucleus=0,
        surprises=(1.0,) * 20,
        temperature=0.0,
        top_p=1.0,
    )
    base.update(kw)
    return RescoreEvidence(**base)


def test_greedy_verdicts_pass_regenerate_fail():
    assert judge(_ev(greedy_mismatches=1)).verdict is Verdict.PASS
    assert judge(_ev(greedy_mismatches=3)).verdict is Verdict.UNDECIDED
    assert judge(_ev(greedy_mismatches=5)).verdict is Verdict.FAIL
    assert judge(_ev(output_tokens=1, greedy_mismatches=1)).verdict is Verdict.PASS  # too little to judge


def test_sampled_verdicts_trim_the_most_surprising_positions():
    honest = _ev(temperature=0.8, surprises=(1.0,) * 18 + (9.0, math.inf), outside_nucleus=1)
    assert judge(honest).verdict is Verdict.PASS  # one merged token outside the nucleus is trimmed
    garbage = _ev(temperature=0.8, surprises=(6.0,) * 20)
    assert judge(garbage).verdict is Verdict.FAIL
    outside = _ev(temperature=0.8, surprises=(1.0,) * 12 + (math.inf,) * 8, outside_nucleus=8)
    assert judge(outside).verdict is Verdict.FAIL and "nucleus" in judge(outside).reason
    # Two neighbours pushed out by one re-tokenized merge (seen with SmolLM2): regenerate, don't convict.
    merged = _ev(
        temperature=0.7,
        top_p=0.9,
        surprises=(1.0,) * 12 + (math.inf,) * 2,
        outside_nucleus=2,
        output_tokens=14,
    )
    assert judge(merged).verdict is Verdict.UNDECIDED
    grey = _ev(temperature=0.8, surprises=(2.3,) * 20)
    assert judge(grey).verdict is Verdict.UNDECIDED


def test_regeneration_verdicts():
    assert judge_regeneration("abc", "abc", temperature=0.0, seed=None).verdict is Verdict.PASS
    assert judge_regeneration("abc", "abd", temperature=0.0, seed=None).verdict is Verdict.FAIL
    assert judge_regeneration("abc", "xyz", temperature=0.7, seed=None).verdict is Verdict.INCONCLUSIVE
    assert judge_regeneration("abc", "abc", temperature=0.7, seed=3).verdict is Verdict.PASS


class _FixedAuditor:
    """A fake of the Auditor port returning preset evidence (the real one is in test_cheaters.py)."""

    name = "fixed"

    def __init__(self, surprises):
        self.surprises = surprises

    def serves(self, model_hash):
        return True

    def score(self, job):
        return _ev(
            temperature=job.limits.temperature, surprises=self.surprises, output_tokens=len(self.surprises)
        )

    def regenerate(self, job):
        raise AssertionError("sampled unseeded audits are never regenerated")


def _sampled_job(i, device="d"):
    from ig3.audit.service import AuditJob
    from ig3.wire import TaskInput, TaskLimits

    return AuditJob(
        audit_id=f"aud_{i}",
        task_id=f"t{i}",
        device=device,
        model="m",
        model_hash="h",
        kind="completion",
        input=TaskInput(prompt="p"),
        limits=TaskLimits(temperature=0.9),
        output="x",
    )


@pytest.mark.parametrize("per_token,expect_fail", [(1.0, False), (2.2, True)])
def test_sampled_audits_pool_evidence_across_tasks(redis_url, redis_prefix, per_token, expect_fail):
    import redis

    from ig3.audit.service import AuditService
    from ig3.audit.store import RedisReputationStore
    from ig3.events import MemoryEventPublisher

    surprises = (per_token,) * 20
    single = judge(_ev(temperature=0.9, surprises=surprises))
    assert single.verdict in (Verdict.PASS, Verdict.UNDECIDED)  # no single audit can fail it
    svc = AuditService(
        store=RedisReputationStore(redis.Redis.from_url(redis_url), prefix=redis_prefix),
        queue=None,
        events=MemoryEventPublisher(),
        auditor=_FixedAuditor(surprises),
        policy=AuditPolicy(rate=1.0),
        clock=lambda: 5000.0,
    )
    verdicts = [svc.run(_sampled_job(i)).verdict for i in range(30)]
    if expect_fail:
        first = verdicts.index(Verdict.FAIL)
        assert 1 <= first <= 10 and all(v in (Verdict.PASS, Verdict.INCONCLUSIVE) for v in verdicts[:first])
        assert "pooled" in svc.store.history("d", limit=50)[-first - 1]["reason"]
    else:
        assert set(verdicts) == {Verdict.PASS}
        assert svc.store.get("d").sampled_positions == 30 * 18  # 20 positions, 2 trimmed each


def test_device_faults_map_to_signals_and_benign_codes_are_ignored(redis_url, redis_prefix):
    import redis

    from ig3.audit.service import AuditService
    from ig3.audit.store import RedisReputationStore
    from ig3.events import MemoryEventPublisher

    svc = AuditService(
        store=RedisReputationStore(redis.Redis.from_url(redis_url), prefix=redis_prefix),
        queue=None,
        events=MemoryEventPublisher(),
        policy=AuditPolicy(rate=0.0),
        clock=lambda: 100.0,
    )
    for code in ("released", "cancelled", "overloaded", "bad_task", "model_not_found"):
        assert svc.device_fault("d", code, f"k:{code}") is None
    svc.device_fault("d", "deadline_exceeded", "k1")
    svc.device_fault("d", "internal", "k2")
    svc.device_fault("d", "internal", "k2")  # redelivered: counted once
    svc.device_fault("d", "bad_signature", "k3")
    svc.device_fault("d", "model_mismatch", "k4")
    state = svc.store.get("d")
    assert (state.timeouts, state.tasks_failed, state.signature_failures, state.model_mismatches) == (
        1,
        1,
        1,
        1,
    )
    assert state.standing is rep.Standing.QUARANTINED  # two integrity failures
    # Forged signatures and swapped model files are also recorded for rewards (ig3.audit.outcomes), once each.
    assert sorted(svc.events.types()) == ["DeviceQuarantined", "IntegrityFault", "IntegrityFault"]
    svc.device_fault("d", "bad_signature", "k3")  # redelivered: no second record
    assert svc.events.types().count("IntegrityFault") == 2
    assert svc.signal("cloud:sagemaker", rep.Signal.AUDIT_FAIL, key="x") == (rep.ReputationState(), None)


def test_audit_budget_is_exact_per_day_and_charges_each_audit_once(redis_url, redis_prefix):
    import redis

    from ig3.audit.store import RedisAuditBudget

    day = [86400.0 * 100]
    budget = RedisAuditBudget(
        redis.Redis.from_url(redis_url), 1000, prefix=redis_prefix, clock=lambda: day[0]
    )
    assert budget.try_spend(600, key="t1") and budget.try_spend(600, key="t1")  # redelivered: paid once
    assert budget.spent() == 600
    assert not budget.try_spend(500, key="t2") and budget.spent() == 600  # refused, nothing kept
    assert budget.try_spend(400, key="t3") and budget.spent() == 1000
    assert not budget.try_spend(1)
    day[0] += 86400  # a new UTC day
    assert budget.spent() == 0 and budget.try_spend(500, key="t2")
