"""Honest answers whose text does not re-tokenize into the device's tokens are not convicted.

A tiny random-weight model (the local cloud's ``--tiny-models``) emits byte-piece tokens: its text
holds U+FFFD and re-scoring the canonical re-tokenization fails every honest answer. The audit
service decides such answers by regeneration (greedy, seeded) or calls them inconclusive (unseeded
samples), and double-checks any re-scoring failure of reproducible work by regeneration. Cheaters
answering plain words are still convicted. Real Redis, real llama.cpp.
"""

from __future__ import annotations

import pytest

from ig3.audit.policy import AuditPolicy
from ig3.audit.service import AuditJob, AuditService
from ig3.audit.store import RedisReputationStore
from ig3.audit.verdict import Verdict
from ig3.events import MemoryEventPublisher
from ig3.wire import ChatMessage, TaskInput, TaskLimits

PROMPTS = ["Say hello.", "Count to five.", "What is 2+2?", "Write a haiku about rain."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ig3.audit.rescorer import ReferenceAuditor
    from ig3_edge.backends.llama_cpp import LlamaCppBackend
    from ig3_edge.models import ModelRegistry
    from ig3_edge.tinymodel import write_tiny_gguf

    root = tmp_path_factory.mktemp("tiny")
    write_tiny_gguf(root / "tiny-llama.gguf", name="tiny-llama")
    registry = ModelRegistry(root)
    registry.scan()
    backend = LlamaCppBackend(registry)
    auditor = ReferenceAuditor([root / "tiny-llama.gguf"])
    yield backend, registry.all()[0], auditor
    backend.close()
    auditor.close()


def test_honest_tiny_model_answers_are_never_convicted_and_plain_word_cheats_are(
    tiny, redis_url, redis_prefix
):
    import redis

    backend, model, auditor = tiny
    events = MemoryEventPublisher()
    svc = AuditService(store=RedisReputationStore(redis.Redis.from_url(redis_url), prefix=redis_prefix),
                       queue=None, events=events, auditor=auditor, policy=AuditPolicy(rate=1.0))
    n = 0

    def audit(device, limits, prompt, text=None):
        nonlocal n
        n += 1
        msgs = [ChatMessage(role="user", content=prompt)]
        gen = backend.generate(model.name, messages=msgs, prompt=None, limits=limits,
                               on_delta=lambda _d: None, should_stop=lambda: None)
        job = AuditJob(audit_id=f"aud_t{n}", task_id=f"t{n}", device=device, model=model.name,
                       model_hash=model.sha256, kind="chat", input=TaskInput(messages=msgs), limits=limits,
                       output=gen.text if text is None else text, finish_reason=gen.finish_reason,
                       prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens)
        return svc.run(job), gen.text

    lossy_seen = 0
    for i, prompt in enumerate(PROMPTS):
        for limits, want in ((TaskLimits(max_tokens=16), Verdict.PASS),
                             (TaskLimits(max_tokens=16, temperature=0.7, seed=i), Verdict.PASS),
                             (TaskLimits(max_tokens=16, temperature=1.0), None)):
            outcome, text = audit("honest", limits, prompt)
            lossy_seen += "\ufffd" in text
            assert outcome.verdict is not Verdict.FAIL, (text, outcome.reason)
            if want is not None:
                assert outcome.verdict is want, outcome.reason
    assert lossy_seen, "the tiny model no longer emits byte pieces: this test checks nothing"
    assert svc.store.get("honest").failed_audits == 0
    assert svc.store.get("honest").standing.value != "quarantined"

    words = "the river was blue and seven paper birds flew quickly over it"
    outcome, _ = audit("liar", TaskLimits(max_tokens=16), PROMPTS[0], text=words)
    assert outcome.verdict is Verdict.FAIL and outcome.regenerated, outcome.reason
    assert "regenerated output differs" in outcome.reason
    assert svc.store.get("liar").standing.value == "quarantined"
    assert "DeviceQuarantined" in events.types()


def test_work_beyond_the_auditors_context_is_inconclusive_not_a_crash(tiny, redis_url, redis_prefix):
    """A device may generate past the model's training context (the agent's n_ctx is larger): the
    auditor cannot re-score it. The job ends inconclusive with no reputation signal, instead of
    raising (which retried it into the DLQ; seen in ig3 up with the tiny 512-token model)."""
    import redis

    _backend, model, auditor = tiny
    events = MemoryEventPublisher()
    svc = AuditService(store=RedisReputationStore(redis.Redis.from_url(redis_url), prefix=redis_prefix),
                       queue=None, events=events, auditor=auditor, policy=AuditPolicy(rate=1.0))
    msgs = [ChatMessage(role="user", content="Tell a story.")]
    long_text = " ".join(["word"] * 2000)  # far beyond the tiny model's 512-token context
    job = AuditJob(audit_id="aud_long", task_id="t_long", device="m1-long", model=model.name,
                   model_hash=model.sha256, kind="chat", input=TaskInput(messages=msgs),
                   limits=TaskLimits(max_tokens=2000), output=long_text, finish_reason="length",
                   prompt_tokens=8, completion_tokens=2000)
    outcome = svc.run(job)
    assert outcome.verdict is Verdict.INCONCLUSIVE and "not auditable" in outcome.reason
    assert not outcome.applied and svc.store.get("m1-long").failed_audits == 0
    [event] = [e for e in events.events if e.detail_type == "AuditCompleted"]
    assert event.detail["verdict"] == "inconclusive" and event.detail["task_id"] == "t_long"
