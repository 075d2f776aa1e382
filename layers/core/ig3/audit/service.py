"""The audit service: decide which completed work to audit, judge it, keep reputations.

Pure orchestration over ports (no AWS): where audits queue (``AuditQueue``), who re-scores
(``Auditor``: another device with the same model hash, or the cloud's reference llama.cpp copy),
where reputations live (``ReputationStore``), the network's audit budget (``AuditBudget``), the
scheduler's reliability input (``ReliabilitySink``) and events.

Flow: ``TaskService`` calls ``task_completed(task)`` after a task completes on the edge (and
``signal`` for signature failures / model-hash mismatches / failures). A task picked by the
policy becomes an ``AuditJob`` on the audit queue; ``run(job)`` re-scores it (regenerates only
when re-scoring cannot decide), folds the verdict into the device's reputation exactly once
(keyed by the job id), and publishes ``AuditCompleted`` and, on a change of standing,
``DeviceQuarantined`` / ``DeviceReinstated``.

Audit work is network work: its tokens are charged to the audit budget (integers), never to the
user whose task was audited (no ``UsageRecorded`` is emitted for audits).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from ig3.audit import reputation as rep
from ig3.audit.policy import AuditPolicy
from ig3.audit.verdict import (
    Judgement,
    RescoreEvidence,
    Verdict,
    VerdictPolicy,
    gamma_tail_log10,
    judge,
    judge_regeneration,
)
from ig3.errors import Unavailable
from ig3.events import DomainEvent, EventPublisher
from ig3.wire import TaskInput, TaskKind, TaskLimits


class AuditJob(BaseModel):
    """One audit: everything the auditor needs, copied from the completed task."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    audit_id: str
    task_id: str
    device: str
    model: str
    model_hash: str
    kind: TaskKind
    input: TaskInput
    limits: TaskLimits
    output: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    why: str = "sampled"  # sampled | suspect
    created_at: float = 0.0


class Auditor(Protocol):
    name: str

    def serves(self, model_hash: str) -> bool: ...
    def score(self, job: AuditJob) -> RescoreEvidence: ...
    def regenerate(self, job: AuditJob) -> str: ...


class AuditQueue(Protocol):
    def send_audit(self, job: AuditJob) -> None: ...


class AuditBudget(Protocol):
    def try_spend(self, tokens: int, key: str | None = None) -> bool: ...  # once per key


class ReliabilitySink(Protocol):
    def record_outcome(self, thing: str, ok: bool) -> Any: ...


class ReputationStore(Protocol):
    def get(self, thing: str) -> rep.ReputationState: ...
    def apply(
        self,
        thing: str,
        signal: rep.Signal,
        *,
        now: float,
        idempotency_key: str,
        policy: rep.ReputationPolicy,
        evidence: dict[str, Any],
        sample: tuple[int, float] | None = None,
    ) -> tuple[rep.ReputationState, str | None, bool]:
        """Atomically fold one signal in, once per key. Returns (state, transition, applied)."""
        ...

    def history(self, thing: str, limit: int = 20) -> list[dict[str, Any]]: ...
    def quarantined(self) -> list[str]: ...
    def set_quarantined(self, thing: str, until: float | None) -> None: ...


_FAULTS = {
    "bad_signature": rep.Signal.SIGNATURE_FAIL,
    "model_mismatch": rep.Signal.MODEL_MISMATCH,
    "deadline_exceeded": rep.Signal.TIMEOUT,
}


# Giving work back on shutdown, the user going away, a full queue, or a task the device cannot take
# (bad input, too long, a kind or model it does not serve) say nothing about the device's honesty.
_NOT_THE_DEVICES_FAULT = frozenset(
    {
        "released",
        "cancelled",
        "overloaded",
        "bad_task",
        "context_length_exceeded",
        "unsupported_kind",
        "model_not_found",
    }
)


@dataclass
class AuditOutcome:
    verdict: Verdict
    reason: str
    regenerated: bool
    state: rep.ReputationState
    transition: str | None
    applied: bool
    audit_tokens: int  # tokens the auditor processed (prompt + output, + regenerated output)


@dataclass
class AuditService:
    store: ReputationStore
    queue: AuditQueue | None  # None: signals and quarantine only, no audits sampled
    events: EventPublisher
    auditor: Auditor | None = None
    budget: AuditBudget | None = None
    reliability: ReliabilitySink | None = None
    policy: AuditPolicy = field(default_factory=AuditPolicy.from_env)
    reputation: rep.ReputationPolicy = field(default_factory=rep.ReputationPolicy)
    verdicts: VerdictPolicy = field(default_factory=VerdictPolicy)
    clock: Callable[[], float] = time.time

    # ----------------------------------------------------------------- intake
    def task_completed(self, task: Any) -> AuditJob | None:
        """After a task COMPLETED on the edge: count the success, maybe queue an audit."""
        device = task.device
        if not device or device.startswith("cloud:") or task.output is None:
            return None
        now = self.clock()
        self.signal(device, rep.Signal.TASK_OK, key=f"ok:{task.task_id}:{task.attempt}", now=now)
        if self.queue is None or task.kind == "embedding" or task.output.text is None or not task.model_hash:
            return None  # nothing a language model can re-score (embeddings are checked by regeneration: not yet)
        state = self.store.get(device)
        why = self.policy.decide(task.task_id, suspect=rep.is_suspect(state, self.reputation, now))
        if why is None:
            return None
        usage = task.usage
        tokens = (usage.prompt_tokens + usage.completion_tokens) if usage else 0
        # Sampled audits are paid from the network's budget; suspects are audited regardless.
        if (
            why == "sampled"
            and self.budget is not None
            and not self.budget.try_spend(tokens, key=task.task_id)
        ):
            return None
        job = AuditJob(
            audit_id=f"aud_{task.task_id}",
            task_id=task.task_id,
            device=device,
            model=task.model,
            model_hash=task.model_hash,
            kind=task.kind,
            input=task.input,
            limits=task.limits,
            output=task.output.text,
            finish_reason=task.output.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            why=why,
            created_at=now,
        )
        self.queue.send_audit(job)
        return job

    def device_fault(self, thing: str, code: str, key: str) -> tuple[rep.ReputationState, str | None] | None:
        """A failed attempt by ``code`` (the dispatch service's error codes) as a reputation signal."""
        signal = _FAULTS.get(code, rep.Signal.TASK_FAILED)
        if code in _NOT_THE_DEVICES_FAULT:
            return None
        return self.signal(thing, signal, key=key, evidence={"code": code})

    def signal(
        self,
        thing: str,
        signal: rep.Signal,
        *,
        key: str,
        now: float | None = None,
        evidence: dict[str, Any] | None = None,
        sample: tuple[int, float] | None = None,
    ) -> tuple[rep.ReputationState, str | None]:
        """Fold a signal into the device's reputation (once per key); publish a change of standing."""
        if not thing or thing.startswith("cloud:"):
            return rep.ReputationState(), None
        now = self.clock() if now is None else now
        evidence = {"signal": signal.value, "at": now, **(evidence or {})}
        state, transition, applied = self.store.apply(
            thing,
            signal,
            now=now,
            idempotency_key=key,
            policy=self.reputation,
            evidence=evidence,
            sample=sample,
        )
        if applied and signal in (rep.Signal.SIGNATURE_FAIL, rep.Signal.MODEL_MISMATCH):
            # Durable record for rewards (ig3.audit.outcomes): a device caught forging or swapping model
            # files earns no credit for its unaudited work of the epoch. Failed audits travel as
            # AuditCompleted.
            self.events.publish([DomainEvent(
                "IntegrityFault",
                {"device": thing, "signal": signal.value, "key": key, "at": now,
                 **({"code": evidence["code"]} if "code" in evidence else {})},
                f"{key}:integrity",
            )])
        if applied and self.reliability is not None and signal in rep.INTEGRITY_SIGNALS:
            # The scheduler's reliability rate counts each integrity failure as several failures
            # (its weight), so a cheater sinks in the ranking before quarantine takes it out.
            for _ in range(max(1, round(self.reputation.weights.get(signal.value, 1.0)))):
                self.reliability.record_outcome(thing, False)
        self._announce(thing, state, transition, evidence, key)
        return state, transition

    # ------------------------------------------------------------------ audit
    def run(self, job: AuditJob) -> AuditOutcome:
        """Re-score one job (regenerate if undecided) and fold the verdict in. Idempotent per job."""
        if self.auditor is None or not self.auditor.serves(job.model_hash):
            # Retried by the queue; another auditor (or the reference copy once deployed) takes it.
            raise Unavailable(f"no auditor holds model {job.model_hash[:12]}", code="no_auditor")
        try:
            ev = self.auditor.score(job)
        except ValueError as exc:
            # The work does not fit the auditor (prompt + output beyond its context: a device may run
            # a model past its training context): nothing can be judged, and a retry changes nothing.
            return self._unauditable(job, str(exc))
        judgement: Judgement = judge(ev, self.verdicts)
        # A claimed text holding U+FFFD is a lossy decode of byte-piece tokens (cut mid-character, or a
        # model emitting invalid UTF-8 — tiny random-weight models do it on every answer): its token
        # sequence cannot be recovered, so re-scoring judges other tokens than the device produced.
        # Such an answer is decided by regeneration, or is inconclusive (never pooled).
        lossy = "\ufffd" in job.output
        if lossy and judgement.verdict is not Verdict.PASS:
            judgement = Judgement(
                Verdict.UNDECIDED,
                "lossy text (U+FFFD), tokens not recoverable: " + judgement.reason,
                judgement.score,
            )
        regenerated = False
        audit_tokens = ev.prompt_tokens + ev.output_tokens
        if judgement.verdict is Verdict.UNDECIDED:
            if job.limits.temperature > 0 and job.limits.seed is None:
                judgement = Judgement(
                    Verdict.INCONCLUSIVE,
                    judgement.reason + "; unseeded sample: cannot regenerate",
                    judgement.score,
                )
            else:
                again = self.auditor.regenerate(job)
                regenerated = True
                audit_tokens += ev.prompt_tokens + job.completion_tokens
                judgement = judge_regeneration(
                    job.output, again, temperature=job.limits.temperature, seed=job.limits.seed
                )
        elif judgement.verdict is Verdict.FAIL and (
            job.limits.temperature == 0 or job.limits.seed is not None
        ):
            # Before convicting reproducible work, reproduce it: a re-scoring failure can be a tokenization
            # artefact (the claimed text re-tokenized into pieces the device never produced), and an
            # identical regeneration proves the device did exactly what the model does. Only ever turns a
            # failure into a pass; costs one regeneration per failed audit.
            again = self.auditor.regenerate(job)
            regenerated = True
            audit_tokens += ev.prompt_tokens + job.completion_tokens
            check = judge_regeneration(
                job.output, again, temperature=job.limits.temperature, seed=job.limits.seed
            )
            if check.verdict is Verdict.PASS:
                judgement = Judgement(Verdict.PASS, "re-scoring failed, " + check.reason, judgement.score)
            else:
                judgement = Judgement(Verdict.FAIL, f"{judgement.reason}; {check.reason}", judgement.score)
        sample = None
        if (
            job.limits.temperature > 0
            and judgement.verdict in (Verdict.PASS, Verdict.INCONCLUSIVE)
            and not regenerated
            and not lossy
        ):
            judgement, sample = self._pooled(job, ev, judgement)
        now = self.clock()
        evidence = {
            "audit_id": job.audit_id,
            "task_id": job.task_id,
            "model_hash": job.model_hash,
            "verdict": judgement.verdict.value,
            "reason": judgement.reason,
            "score": round(judgement.score, 4),
            "why": job.why,
            "auditor": self.auditor.name,
            "tokens": ev.output_tokens,
            "regenerated": regenerated,
        }
        signal = {
            Verdict.PASS: rep.Signal.AUDIT_PASS,
            Verdict.FAIL: rep.Signal.AUDIT_FAIL,
            Verdict.INCONCLUSIVE: rep.Signal.AUDIT_INCONCLUSIVE,
        }.get(judgement.verdict)
        if signal is not None:
            state, transition = self.signal(
                job.device, signal, key=job.audit_id, now=now, evidence=evidence, sample=sample
            )
            applied = True
        else:
            state, transition, applied = self.store.get(job.device), None, False
        self.events.publish(
            [
                DomainEvent(
                    "AuditCompleted",
                    # pooled: a sampled-output pass that stands only with the device's pooled evidence
                    # (a later pooled conviction retracts it); rewards count it only for clean devices.
                    {"device": job.device, **evidence, "audit_tokens": audit_tokens, "at": now,
                     "pooled": sample is not None and judgement.verdict is Verdict.PASS},
                    f"{job.audit_id}:audited",
                )
            ]
        )
        return AuditOutcome(
            judgement.verdict, judgement.reason, regenerated, state, transition, applied, audit_tokens
        )

    def _unauditable(self, job: AuditJob, reason: str) -> AuditOutcome:
        """Inconclusive without a reputation signal: the device is neither credited nor blamed."""
        now = self.clock()
        evidence = {"audit_id": job.audit_id, "task_id": job.task_id, "model_hash": job.model_hash,
                    "verdict": Verdict.INCONCLUSIVE.value, "reason": f"not auditable: {reason}", "score": 0.0,
                    "why": job.why, "auditor": self.auditor.name, "tokens": 0, "regenerated": False}
        self.events.publish([DomainEvent(
            "AuditCompleted",
            {"device": job.device, **evidence, "audit_tokens": 0, "at": now, "pooled": False},
            f"{job.audit_id}:audited",
        )])
        return AuditOutcome(Verdict.INCONCLUSIVE, evidence["reason"], False, self.store.get(job.device), None,
                            False, 0)

    def _pooled(
        self, job: AuditJob, ev: RescoreEvidence, judgement: Judgement
    ) -> tuple[Judgement, tuple[int, float]]:
        """Pool this sampled audit with the device's earlier ones (since its last failed audit).

        The trimmed surprise sums of independent honest audits add up to (at most) a Gamma of the
        summed positions, so the pooled tail is a valid test that grows in power with every audit:
        a device whose every answer is a little too unlikely fails once the pool says so. The pool
        is tested after every audit (sequential looks): by the union bound an honest device's
        lifetime false-failure chance stays below looks x ``sampled_fail_p`` (1e-6 each). A pooled
        conviction retracts the clean audits in the pool (``reputation.apply``): they were the same cheat."""
        n, total, _ = ev.trimmed(self.verdicts.trim_fraction)
        state = self.store.get(job.device)
        pooled_n, pooled_s = state.sampled_positions + n, state.sampled_surprise + total
        lp = gamma_tail_log10(pooled_n, pooled_s)
        if state.sampled_positions > 0 and lp <= math.log10(self.verdicts.sampled_fail_p):
            return Judgement(
                Verdict.FAIL,
                f"sampled, pooled over {pooled_n} positions of this device's audits: "
                f"surprise p=10^{lp:.1f}",
                lp,
            ), (n, total)
        return judgement, (n, total)

    # ------------------------------------------------------------------ reads
    def view(self, thing: str) -> dict[str, Any]:
        """What ``GET /v1/devices/{id}`` shows under ``reputation``."""
        now = self.clock()
        state = rep.decayed(self.store.get(thing), now, self.reputation)
        return {
            "score": round(rep.score(state, self.reputation), 4),
            "standing": state.standing.value,
            "suspect": rep.is_suspect(state, self.reputation, now),
            **{
                k: v for k, v in state.as_dict().items() if k not in ("good", "bad", "updated_at", "standing")
            },
            "audits": self.store.history(thing, limit=20),
        }

    def quarantine_list(self) -> list[dict[str, Any]]:
        now = self.clock()
        out = []
        for thing in self.store.quarantined():
            state = rep.decayed(self.store.get(thing), now, self.reputation)
            evidence = [
                h
                for h in self.store.history(thing, limit=50)
                if h.get("signal") in {s.value for s in rep.INTEGRITY_SIGNALS}
            ][:10]
            out.append(
                {
                    "device": thing,
                    "standing": state.standing.value,
                    "reason": state.reason,
                    "score": round(rep.score(state, self.reputation), 4),
                    "quarantined_at": state.quarantined_at,
                    "quarantined_until": state.quarantined_until,
                    "quarantines": state.quarantines,
                    "evidence": evidence,
                }
            )
        return out

    def _announce(
        self,
        thing: str,
        state: rep.ReputationState,
        transition: str | None,
        evidence: dict[str, Any],
        key: str,
    ) -> None:
        if transition == "quarantined":
            self.store.set_quarantined(thing, state.quarantined_until)
            self.events.publish(
                [
                    DomainEvent(
                        "DeviceQuarantined",
                        {
                            "device": thing,
                            "reason": state.reason,
                            "until": state.quarantined_until,
                            "score": round(rep.score(state, self.reputation), 4),
                            "quarantines": state.quarantines,
                            "evidence": evidence,
                        },
                        f"{thing}:quarantined:{state.quarantines}",
                    )
                ]
            )
        elif transition in ("reinstated", "probation"):
            if transition == "reinstated":
                self.store.set_quarantined(thing, None)
            self.events.publish(
                [
                    DomainEvent(
                        "DeviceReinstated" if transition == "reinstated" else "DeviceOnProbation",
                        {"device": thing, "score": round(rep.score(state, self.reputation), 4)},
                        f"{thing}:{transition}:{state.quarantines}",
                    )
                ]
            )
