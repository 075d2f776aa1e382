"""Cheating devices against the real dispatch service, real signatures, real Redis and real models.

The auditor is the cloud reference copy of SmolLM2-135M-Instruct (``ReferenceAuditor``); honest
devices run the same file through the agent's llama.cpp backend; the "smaller model" cheater runs
a tiny random-weight llama GGUF (``write_tiny_gguf``) while claiming SmolLM2's hash. Every device
signs its results with its own key; the verifier checks them against the registry's address.

Stated detection bounds (the reputation defaults, ``ig3.audit.reputation``):
- a new device cheating by random text or a smaller model: quarantined on its first task
  (newcomers are audited on every task; one failed audit quarantines a newcomer); a replayer
  (one honest answer first, replayed afterwards): on its second cheating task;
- a valid answer signed with the wrong key, or a result naming another model file: rejected
  (the task is re-run elsewhere) and quarantined on the second such task;
- unseeded sampled work (T=1.0): random words pass single audits (a 135M model's honest samples at
  T=1 look much like them) and are convicted by the evidence pooled across the device's audits, a
  leaning pool keeping it audited on every task: within ``bound`` = 24 tasks (measured: 9);
- a device that earned its clean audits honestly and then cheats: quarantined at its second or
  third failed audit (the first makes it a suspect, audited on every task, so the 2nd and 3rd follow at once)
  — within ``ESTABLISHED_BOUND`` cheating tasks at the 5% audit rate (the keyed sample is fixed
  here, so the count is deterministic; it is printed).
"""

from __future__ import annotations

import random
import shutil

import pytest

from ig3.audit import reputation as rep
from ig3.audit.policy import AuditPolicy
from ig3.audit.rescorer import ReferenceAuditor
from ig3.audit.service import AuditService
from ig3.audit.store import RedisReputationStore
from ig3.audit.verdict import Verdict
from ig3.events import MemoryEventPublisher
from ig3.tasks.model import TaskSpec, TaskStatus
from ig3.tasks.signatures import DeviceSignatureVerifier
from ig3.wire import DeviceResult, DeviceTask, TaskOutput, Usage
from tests.tasks.fakes import FakePlacer, Placement, make_service

ESTABLISHED_BOUND = 80
WORDS = "the of and to in is was for on that with as by at from river quickly blue seven paper".split()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from ig3.local.fleet import smollm2_path
    from ig3_edge.backends.llama_cpp import LlamaCppBackend
    from ig3_edge.models import ModelRegistry
    from ig3_edge.tinymodel import write_tiny_gguf

    root = tmp_path_factory.mktemp("audit-models")
    (root / "big").mkdir()
    (root / "big" / smollm2_path().name).symlink_to(smollm2_path())
    write_tiny_gguf(root / "small" / "tiny.gguf", seed=3)
    big = ModelRegistry(root / "big")
    big.scan()
    small = ModelRegistry(root / "small")
    small.scan()
    out = {
        "big": LlamaCppBackend(big),
        "small": LlamaCppBackend(small),
        "big_model": big.all()[0],
        "small_model": small.all()[0],
        "auditor": ReferenceAuditor([root / "big" / smollm2_path().name]),
    }
    yield out
    out["big"].close()
    out["small"].close()
    out["auditor"].close()
    shutil.rmtree(root, ignore_errors=True)


class PinningPlacer(FakePlacer):
    """The fake scheduler, plus what the real one does: pin the model hash, skip quarantined devices."""

    def __init__(self, devices, model, model_hash, store):
        super().__init__(devices, {model})
        self.model_hash = model_hash
        self.store = store

    def place(self, task, *, hold_s):
        quarantined = set(self.store.excluded())
        saved = list(task.excluded)
        task.excluded[:] = saved + [d for d in quarantined if d not in saved]
        try:
            p = super().place(task, hold_s=hold_s)
        finally:
            task.excluded[:] = saved
        return Placement(p.thing, self.model_hash, p.reason) if p else None


class Device:
    def __init__(self, thing, mode, models):
        from eth_account import Account

        from ig3_edge.signing import ResultSigner

        self.thing, self.mode, self.m = thing, mode, models
        self.signer = ResultSigner(Account.create().key.hex())
        self.wrong = ResultSigner(Account.create().key.hex())
        self.answers: list[str] = []
        self.rng = random.Random(thing)

    def answer(self, task: DeviceTask) -> DeviceResult:
        msgs = task.input.messages
        big_hash = self.m["big_model"].sha256
        backend, model, claimed_hash = self.m["big"], self.m["big_model"], big_hash
        text = finish = None
        if self.mode == "random":
            text, finish = " ".join(self.rng.choice(WORDS) for _ in range(12)), "length"
        elif self.mode == "smaller":
            backend, model = self.m["small"], self.m["small_model"]
        elif self.mode == "replay" and self.answers:
            text, finish = self.answers[0], "length"
        elif self.mode == "wrong_hash":
            claimed_hash = self.m["small_model"].sha256  # honest about running another file
        if text is None:
            g = backend.generate(
                model.name,
                messages=msgs,
                prompt=None,
                limits=task.limits,
                on_delta=lambda _d: None,
                should_stop=lambda: None,
            )
            text, finish = g.text, g.finish_reason
        self.answers.append(text)
        result = DeviceResult(
            task_id=task.id,
            attempt=task.attempt,
            thing=self.thing,
            status="ok",
            output=TaskOutput(text=text, finish_reason=finish),
            usage=Usage(prompt_tokens=20, completion_tokens=12),
            model_hash=claimed_hash,
        )
        signed = (self.wrong if self.mode == "wrong_key" else self.signer).sign(result)
        return signed


PROMPTS = [
    "Name a color.",
    "Say hello to a friend.",
    "What is rain?",
    "Give one word for happy.",
    "Write a short greeting.",
    "Name a fruit.",
    "What do cats eat?",
    "Count to three.",
]


def world(models, redis_url, redis_prefix, devices: dict[str, str], rate=0.05):
    import redis

    store = RedisReputationStore(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    fleet = {name: Device(name, mode, models) for name, mode in devices.items()}
    registry = {d.thing: d.signer.address for d in fleet.values()}
    svc = make_service({name: 1 for name in devices}, verifier=DeviceSignatureVerifier(registry.get))
    svc.placer = PinningPlacer({name: 1 for name in devices}, "smollm2", models["big_model"].sha256, store)
    jobs = []
    audit = AuditService(
        store=store,
        queue=type("Q", (), {"send_audit": lambda self, j: jobs.append(j)})(),
        events=MemoryEventPublisher(),
        auditor=models["auditor"],
        policy=AuditPolicy(rate=rate, secret=b"test-audit-key"),
    )
    svc.audit = audit
    return svc, audit, store, fleet, jobs


def run_task(svc, audit, fleet, jobs, key: str, prompt: str, *, max_tokens=12, **limits):
    spec = TaskSpec(
        kind="chat",
        model="smollm2",
        input={"messages": [{"role": "user", "content": prompt}]},
        limits={"max_tokens": max_tokens, **limits},
    )
    task = svc.submit(spec, account="0xuser", idempotency_key=key)
    out = svc.dispatch(task.task_id)
    if out.action != "assigned":
        return out.action, None, []
    msg = DeviceTask.model_validate_json(svc.iot.sent[-1][1])
    assert msg.model_hash == fleet[out.task.device].m["big_model"].sha256  # the task pins the file
    what = svc.handle_result(fleet[out.task.device].answer(msg))
    outcomes = [audit.run(j) for j in jobs]
    jobs.clear()
    return what, out.task.device, outcomes


@pytest.mark.parametrize("mode", ["random", "smaller", "replay"])
def test_new_cheater_is_quarantined_on_its_first_audited_task(models, redis_url, redis_prefix, mode):
    svc, audit, store, fleet, jobs = world(models, redis_url, redis_prefix, {"cheat": mode})
    first_prompt = 0
    if mode == "replay":  # an honest first answer to replay later (the device is audited: it passes)
        what, _, outs = run_task(svc, audit, fleet, jobs, "k0", PROMPTS[0])
        assert what == "completed" and [o.verdict for o in outs] == [Verdict.PASS]
        first_prompt = 1
    # A newcomer falls on its first failed audit; the replayer earned one clean audit first, so it
    # falls on its second (the first made it a suspect: audited on every task).
    bound = 2 if mode == "replay" else 1
    verdicts = []
    for n in range(1, bound + 1):
        what, device, outs = run_task(svc, audit, fleet, jobs, f"k{n}", PROMPTS[first_prompt + n + 1])
        assert what == "completed" and device == "cheat"
        verdicts += [o.verdict for o in outs]
        if outs and outs[-1].transition == "quarantined":
            break
    assert verdicts == [Verdict.FAIL] * bound, verdicts
    assert store.get("cheat").standing is rep.Standing.QUARANTINED
    assert "DeviceQuarantined" in audit.events.types()
    assert [q["device"] for q in audit.quarantine_list()] == ["cheat"]
    # No new work for it.
    action, _, _ = run_task(svc, audit, fleet, jobs, "k9", PROMPTS[7])
    assert action == "waiting"


@pytest.mark.parametrize("mode,code", [("wrong_key", "bad_signature"), ("wrong_hash", "model_mismatch")])
def test_wrong_key_or_wrong_model_file_is_rejected_and_quarantined_on_the_second(
    models, redis_url, redis_prefix, mode, code
):
    svc, audit, store, fleet, jobs = world(models, redis_url, redis_prefix, {"bad": mode, "good": "honest"})
    outcomes = []
    for i in range(4):
        what, device, _ = run_task(svc, audit, fleet, jobs, f"k{i}", PROMPTS[i], max_tokens=4)
        outcomes.append((what, device))
        if store.get("bad").standing is rep.Standing.QUARANTINED:
            break
    bad_tasks = [o for o in outcomes if o[1] == "bad"]
    assert len(bad_tasks) == 2 and all(w in ("rejected", "model_mismatch") for w, _ in bad_tasks)
    state = store.get("bad")
    assert state.standing is rep.Standing.QUARANTINED
    assert (state.signature_failures if code == "bad_signature" else state.model_mismatches) == 2
    # The rejected attempts went back to the queue, with the cheater excluded.
    task = svc.store.get(svc.queue.dispatches[0][0])  # the first task went to "bad" (placed by name)
    assert task.status is TaskStatus.PENDING and "bad" in task.excluded and task.error.code == code
    history = audit.view("bad")["audits"]
    assert history[0]["transition"] == "quarantined" and history[0]["code"] == code


@pytest.mark.slow
def test_honest_devices_pass_every_audit_and_established_cheater_is_caught(models, redis_url, redis_prefix):
    svc, audit, store, fleet, jobs = world(models, redis_url, redis_prefix, {"honest": "honest"})
    verdicts = []
    for i in range(4):  # greedy and sampled (seeded) honest work; newcomer: every task audited
        limits = {} if i % 2 == 0 else {"temperature": 0.7, "top_p": 0.9, "seed": i}
        what, _, outs = run_task(svc, audit, fleet, jobs, f"h{i}", PROMPTS[i], **limits)
        assert what == "completed"
        verdicts += [o.verdict for o in outs]
    assert verdicts and all(v is Verdict.PASS for v in verdicts), verdicts
    state = store.get("honest")
    assert (
        state.standing is rep.Standing.GOOD
        and state.failed_audits == 0
        and state.clean_audits == len(verdicts)
    )
    view = audit.view("honest")
    assert view["score"] > 0.8 and not view["suspect"]
    # It turns cheater: only 5% of its tasks are sampled now, until a failure makes it a suspect.
    fleet["honest"].mode = "random"
    for n in range(1, ESTABLISHED_BOUND + 1):
        run_task(svc, audit, fleet, jobs, f"c{n}", PROMPTS[n % len(PROMPTS)])
        if store.get("honest").standing is rep.Standing.QUARANTINED:
            break
    state = store.get("honest")
    assert state.standing is rep.Standing.QUARANTINED, f"not caught within {ESTABLISHED_BOUND} tasks"
    # With c clean audits and its unaudited successes (0.05 each) behind it, quarantine needs k failed
    # audits with (c + 4 + 0.05 t) / (c + 5 + 0.05 t + 4k) < 0.5: 2 or 3 here.
    assert 2 <= state.failed_audits <= 3
    print(f"established cheater quarantined after {n} cheating tasks ({state.failed_audits} failed audits)")


def test_redis_store_applies_each_signal_once(redis_url, redis_prefix):
    import redis

    store = RedisReputationStore(redis.Redis.from_url(redis_url), prefix=redis_prefix)
    policy = rep.ReputationPolicy()
    s1, t1, a1 = store.apply(
        "d1",
        rep.Signal.AUDIT_FAIL,
        now=100.0,
        idempotency_key="aud_1",
        policy=policy,
        evidence={"reason": "x"},
    )
    s2, t2, a2 = store.apply(
        "d1",
        rep.Signal.AUDIT_FAIL,
        now=101.0,
        idempotency_key="aud_1",
        policy=policy,
        evidence={"reason": "x"},
    )
    assert (a1, t1) == (True, "quarantined") and (a2, t2) == (False, None)
    assert s2 == s1 == store.get("d1") and store.get("d1").failed_audits == 1
    assert len(store.history("d1")) == 1
    store.set_quarantined("d1", 200.0)
    assert store.excluded(now=150.0) == ["d1"] and store.excluded(now=250.0) == []
    assert store.quarantined() == ["d1"]


@pytest.mark.slow
def test_sampled_work_random_text_is_caught_by_pooled_audits_and_honest_sampling_is_not(
    models, redis_url, redis_prefix
):
    """Unseeded T=1.0 sampling: one audit of a short answer cannot convict random words (they can look
    like a 135M model's honest samples), so the evidence is pooled per device across its audits."""
    bound = 24
    limits = {"temperature": 1.0, "max_tokens": 16}
    svc, audit, store, fleet, jobs = world(models, redis_url, redis_prefix, {"liar": "random"})
    liar_verdicts = []
    for n in range(1, bound + 1):
        what, device, outs = run_task(svc, audit, fleet, jobs, f"s{n}", PROMPTS[n % len(PROMPTS)], **limits)
        assert what == "completed" and device == "liar"
        liar_verdicts += [o.verdict for o in outs]
        if store.get("liar").standing is rep.Standing.QUARANTINED:
            break
    assert store.get("liar").standing is rep.Standing.QUARANTINED, liar_verdicts
    assert liar_verdicts[-1] is Verdict.FAIL and Verdict.FAIL not in liar_verdicts[:-1]
    assert "pooled" in audit.view("liar")["audits"][0]["reason"] or len(liar_verdicts) == 1
    svc, audit, store, fleet, jobs = world(models, redis_url, redis_prefix, {"honest": "honest"})
    honest_verdicts = []
    for n in range(1, 4):  # its newcomer audits
        what, device, outs = run_task(svc, audit, fleet, jobs, f"h{n}", PROMPTS[n % len(PROMPTS)], **limits)
        assert what == "completed" and device == "honest"
        honest_verdicts += [o.verdict for o in outs]
    assert len(honest_verdicts) >= 3 and Verdict.FAIL not in honest_verdicts, honest_verdicts
    assert store.get("honest").standing is rep.Standing.GOOD
    print(
        f"random words at T=1.0 quarantined after {len(liar_verdicts)} audited tasks: {liar_verdicts}; "
        f"honest sampled: {honest_verdicts}"
    )
