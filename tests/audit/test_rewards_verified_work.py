"""Rewards count only verified work (issue #13): audited-clean tasks, and the unaudited work of a device
with no integrity failure once the epoch's audit window has passed. Money stays exact (integers)."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import orjson
import pytest

from ig3.audit.outcomes import IntegrityRecord, MemoryOutcomeStore, OutcomeRow, parse_outcome_message
from ig3.billing.pricing import price_book
from ig3.billing.rewards import DeviceInfo, MappingUptime, RewardsConfig
from ig3.billing.rewards_store import MemoryRewardsStore, run_epoch
from ig3.billing.service import BillingService
from ig3.billing.store import MemoryBillingStore

from .test_audit_function_api import _receive_as_lambda_event, audit_env  # noqa: F401 — the fixture

STAKE = Decimal(100_000)  # above the minimum stake: a single staked device takes the whole bonus pool
UNIT = 10**6


def _doc(**over):
    import json

    from ig3.billing.rewards import DEFAULT_REWARDS_PATH

    return {**json.loads(DEFAULT_REWARDS_PATH.read_text()), **over}


CFG = RewardsConfig.from_document(_doc())


def _ledger(epoch_start: float, work: dict[str, int]) -> BillingService:
    """``work``: device -> completed tasks ``<device>-t<i>``, billed inside the epoch."""
    svc = BillingService(MemoryBillingStore(), price_book(), clock=lambda: epoch_start + 3600)
    svc.credit("0xuser", 10**12, "dep")
    for device, n in work.items():
        for i in range(n):
            details = {"device": device, "usage_kind": "chat", "prompt_tokens": 5, "completion_tokens": 5}
            svc.settle(f"{device}-t{i}", 100, account="0xuser", details=details)
    return svc


def _audit(device, task, verdict, at_s, pooled=False):
    return OutcomeRow(device, f"audit#{task}", "audit", int(at_s * 1000), verdict, task, provisional=pooled)


def _bonus(config, epoch, device, ledger, outcomes, now):
    rewards = MemoryRewardsStore()
    run_epoch(epoch, config=config, roster=[DeviceInfo(device, tier="m1", stake=STAKE, region="eu")],
              uptime=MappingUptime({device: 7 * 86400}), ledger=ledger.store, rewards=rewards, now=now,
              outcomes=outcomes)
    return rewards.get(device, epoch)


def test_only_verified_work_counts_and_payouts_are_exact_integers():
    epoch = 40
    start, end = CFG.epoch_bounds(epoch)
    t0, after = start.timestamp(), end.timestamp() + CFG.audit_window_s + 1
    ledger = _ledger(t0, {"honest": 10, "cheat": 10, "forger": 10, "late": 10})
    store = MemoryOutcomeStore()
    for row in (
        _audit("honest", "honest-t0", "pass", t0 + 4000),
        _audit("honest", "honest-t1", "pass", t0 + 5000, pooled=True),
        _audit("honest", "honest-t2", "inconclusive", t0 + 5000),
        _audit("cheat", "cheat-t0", "pass", t0 + 4000),  # clean on its own evidence: still counts
        _audit("cheat", "cheat-t1", "pass", t0 + 4000, pooled=True),  # retractable: withheld
        _audit("cheat", "cheat-t2", "fail", t0 + 6000),
        OutcomeRow("forger", "fault#sig:forger-t3:1:forger", "fault", int((t0 + 7000) * 1000),
                   "signature_fail"),
        # Found dirty after the audit window closed: the published epoch does not depend on when it ran.
        _audit("late", "late-t5", "fail", end.timestamp() + CFG.audit_window_s + 5),
    ):
        assert store.record(row)
    assert not store.record(_audit("cheat", "cheat-t2", "pass", t0 + 9000))  # first verdict stands

    got = {d: _bonus(CFG, epoch, d, ledger, store, after) for d in ("honest", "cheat", "forger", "late")}
    # AI task score = 1 + min(1, counted / 10); one staked device: bonus = 8000 x score, in 10^-6 TOPS.
    assert got["honest"].factors["tasks_counted"] == "10" and got["honest"].bonus_units == 16_000 * UNIT
    assert got["cheat"].factors["tasks_counted"] == "1" and got["cheat"].factors["tasks_withheld"] == "9"
    assert got["cheat"].bonus_units == 8_800 * UNIT and got["cheat"].factors["integrity_failures"] == "1"
    assert got["forger"].factors["tasks_counted"] == "0" and got["forger"].bonus_units == 8_000 * UNIT
    assert got["late"].factors["tasks_counted"] == "10"
    for r in got.values():
        assert isinstance(r.total_units, int) and r.total_units == r.base_units + r.bonus_units

    strict = RewardsConfig.from_document(_doc(unaudited_work_counts=False))
    assert strict.unaudited_work_counts is False
    # Strict: the honest device keeps only its audited-clean work (t0, and t1 pooled on a clean device).
    assert _bonus(strict, epoch, "honest", ledger, store, after).factors["tasks_counted"] == "2"

    with pytest.raises(ValueError, match="audit window"):
        _bonus(CFG, epoch, "honest", ledger, store, end.timestamp() + 1)  # audits may still land


def test_integrity_record_rules():
    rec = IntegrityRecord.of([
        _audit("d", "a", "pass", 1), _audit("d", "b", "pass", 1, pooled=True), _audit("d", "c", "fail", 1),
        OutcomeRow("d", "fault#k", "fault", 1000, "model_mismatch"), _audit("d", "e", "undecided", 1),
    ])
    assert (rec.clean, rec.provisional, rec.dirty, rec.failures) == ({"a"}, {"b"}, {"c"}, 2)
    assert [CFG.counts_task(t, rec) for t in "abcez"] == [True, False, False, False, False]
    clean = IntegrityRecord.of([_audit("d", "b", "pass", 1, pooled=True)])
    assert [CFG.counts_task(t, clean) for t in "bz"] == [True, True]
    assert CFG.counts_task("z", None)  # no outcome source: every completed task (before issue #13)


@pytest.mark.parametrize("body", [
    b"not json",
    b"[]",
    orjson.dumps({"detail-type": "TaskCompleted", "detail": {}}),
    orjson.dumps({"detail-type": "AuditCompleted", "detail": {"device": "d"}}),
    orjson.dumps({"detail-type": "IntegrityFault", "detail": {"device": "d", "at": 1}}),
])
def test_malformed_outcome_events_are_refused(body):
    with pytest.raises(ValueError):
        parse_outcome_message(body)


@pytest.mark.integration
def test_audits_through_bus_queue_and_consumer_decide_the_epoch_rewards(audit_env, aws_env):  # noqa: F811
    """Real path: the audit function (SmolLM2 reference copy) and a forged signature publish on the bus;
    the rule feeds the audit_outcomes queue; its consumer (redelivered) writes DynamoDB once; the rewards
    job then withholds the liar's and the forger's unaudited work and pays the honest device's."""
    import boto3

    from ig3 import config as ig3_config
    from ig3.audit import reputation as rep
    from ig3.audit.outcomes import DynamoOutcomeStore
    from ig3.audit.service import AuditJob
    from ig3.audit.store import SqsAuditQueue
    from ig3.audit.wiring import audit_service
    from ig3.local.lambda_runtime import LambdaContext
    from ig3.local.pollers import sqs_event
    from ig3.wire import TaskInput, TaskLimits
    from ig3_functions.audit.handler import handler as audit_handler
    from ig3_functions.billing.audit_outcomes import handler as outcomes_handler

    assert ig3_config.table_name("audit_outcomes")
    run = uuid.uuid4().hex[:8]
    honest, liar, forger = f"honest-{run}", f"liar-{run}", f"forger-{run}"
    svc = audit_service()
    ref_hash = svc.auditor.hashes()[0]
    messages = [{"role": "user", "content": "Name a color."}]
    limits = TaskLimits(max_tokens=10)

    def job(task_id, device, text):
        return AuditJob(audit_id=f"aud_{task_id}", task_id=task_id, device=device, model="smollm2",
                        model_hash=ref_hash, kind="chat", input=TaskInput(messages=messages), limits=limits,
                        output=text, finish_reason="length", prompt_tokens=20, completion_tokens=10)

    honest_text = svc.auditor.regenerate(job("x", "x", ""))
    queue = SqsAuditQueue(audit_env["url"])
    queue.send_audit(job(f"{honest}-t0", honest, honest_text))
    queue.send_audit(job(f"{liar}-t0", liar, "seven paper river the quickly of blue and"))
    out = audit_handler(_receive_as_lambda_event(audit_env["sqs"], audit_env["url"], 2),
                        LambdaContext(function_name="audit", aws_request_id=uuid.uuid4().hex))
    assert out == {"batchItemFailures": []}
    svc.device_fault(forger, "bad_signature", f"sig:{forger}-t9:1:{forger}")

    sqs = boto3.client("sqs")
    url = aws_env["IG3_QUEUE_AUDIT_OUTCOMES_URL"]
    mine: list[dict] = []
    deadline = time.time() + 60
    while len(mine) < 3 and time.time() < deadline:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for m in got.get("Messages", []):
            if run in m["Body"]:
                mine.append(m)
    assert len(mine) == 3, "AuditCompleted x2 + IntegrityFault did not reach the audit_outcomes queue"
    event = sqs_event(mine + mine[:2], "arn:aws:sqs:us-east-1:1:audit_outcomes", "us-east-1")  # redelivered
    event["Records"].append({**event["Records"][0], "messageId": "bad", "body": "{}"})  # malformed: dropped
    ctx = LambdaContext(function_name="audit_outcomes", aws_request_id=uuid.uuid4().hex)
    assert outcomes_handler(event, ctx) == {"batchItemFailures": []}

    store = DynamoOutcomeStore.from_env()
    now = time.time()
    rows = {d: store.rows(d, 0, int(now * 1000) + 60_000) for d in (honest, liar, forger)}
    assert [(r.verdict, r.task_id) for r in rows[honest]] == [("pass", f"{honest}-t0")]
    assert [(r.verdict, r.task_id) for r in rows[liar]] == [("fail", f"{liar}-t0")]
    assert [(r.kind, r.verdict) for r in rows[forger]] == [("fault", rep.Signal.SIGNATURE_FAIL.value)]

    config = RewardsConfig.from_env()
    epoch = config.epoch_of(now)
    start, end = config.epoch_bounds(epoch)
    ledger = _ledger(start.timestamp(), {honest: 5, liar: 5, forger: 5})
    after = end.timestamp() + config.audit_window_s + 1
    got = {d: _bonus(config, epoch, d, ledger, store, after) for d in (honest, liar, forger)}
    assert got[honest].factors["tasks_counted"] == "5" and got[honest].bonus_units == 12_000 * UNIT
    assert got[liar].factors["tasks_counted"] == "0" and got[liar].factors["tasks_withheld"] == "5"
    assert got[forger].factors["tasks_counted"] == "0" and got[forger].bonus_units == 8_000 * UNIT
