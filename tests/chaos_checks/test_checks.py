"""The chaos run's invariant checks (``chaos.checks``) on hand-made evidence: each one holds on a
consistent run and catches the violation it is there for. The run itself is ``make chaos``."""

from __future__ import annotations

from chaos import checks


def T(status, route="edge", kind="chat", prompt=10, completion=5):  # a task record
    return {
        "status": status,
        "route": route,
        "kind": kind,
        "model": "m",
        "attempt": 1,
        "error": None,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }


def ev(kind, task, attempt=1, device="d1"):
    return (kind, {"task_id": task, "attempt": attempt, "device": device, "event_id": f"{task}:{kind}"})


def usage(ref, amount, requested=None, account="a"):
    return {
        "entry_id": f"usage#{ref}",
        "account": account,
        "amount": amount,
        "kind": "usage",
        "reference": ref,
        "requested_amount": -amount if requested is None else requested,
    }


def cost(doc):
    return doc["usage"]["prompt_tokens"] + 2 * doc["usage"]["completion_tokens"]


TASKS = {"tsk_" + "a" * 26: T("COMPLETED"), "tsk_" + "b" * 26: T("FAILED")}
A, B = sorted(TASKS)
EVENTS = [ev("TaskCompleted", A), ev("TaskCompleted", A), ev("TaskFailed", B)]  # a re-published event is fine


def test_consistent_run_passes_every_check():
    assert checks.one_terminal_state(TASKS, EVENTS).ok
    assert checks.completed_once(TASKS, EVENTS).ok
    entries = [
        {
            "entry_id": "deposit#g",
            "account": "a",
            "amount": 100,
            "kind": "deposit",
            "reference": "g",
            "requested_amount": None,
        },
        usage(A, -20),
    ]
    assert all(c.ok for c in checks.billing(TASKS, entries, {B: "released"}, cost, set()))
    assert checks.ledger(True, [], 0, {"a": {"balance": 80, "held": 0, "available": 80}}, entries).ok


def test_open_or_doubly_terminal_tasks_fail():
    c = checks.one_terminal_state({**TASKS, "tsk_" + "c" * 26: T("ASSIGNED")}, EVENTS)
    assert not c.ok and "not terminal 1" in c.detail
    c = checks.one_terminal_state(TASKS, [*EVENTS, ev("TaskFailed", A)])
    assert not c.ok and "two terminal transitions 1" in c.detail
    c = checks.completed_once(TASKS, [*EVENTS, ev("TaskCompleted", A, attempt=2, device="d2")])
    assert not c.ok and c.bad == [A]


def test_billing_violations_are_caught():
    unbilled, wrong_price, failed_billed, stray = (
        checks.billing(TASKS, [], {B: "released"}, cost, set())[0],
        checks.billing(TASKS, [usage(A, -19)], {B: "released"}, cost, set())[1],
        checks.billing(TASKS, [usage(A, -20), usage(B, -3)], {B: "released"}, cost, set())[2],
        checks.billing(TASKS, [usage(A, -20), usage("req_" + "0" * 32, -5)], {}, cost, set())[3],
    )
    assert not unbilled.ok and "unbilled 1" in unbilled.detail
    assert not wrong_price.ok and "1 differ" in wrong_price.detail
    assert not failed_billed.ok and "billed 1" in failed_billed.detail
    assert not checks.billing(TASKS, [usage(A, -20)], {B: "active"}, cost, set())[2].ok  # hold never released
    assert not stray.ok
    # ... while an answered cloud-route LLM request explains its own entry
    assert checks.billing(
        TASKS, [usage(A, -20), usage("req_" + "0" * 32, -5)], {}, cost, {"req_" + "0" * 32}
    )[3].ok


def test_ledger_that_does_not_add_up_fails():
    entries = [usage(A, -20)]
    assert not checks.ledger(True, [], 0, {"a": {"balance": -19, "held": 0, "available": -19}}, entries).ok
    assert not checks.ledger(True, [], 1, {"a": {"balance": -20, "held": 0, "available": -20}}, entries).ok
    assert not checks.ledger(
        False, [{"account": "a"}], 0, {"a": {"balance": -20, "held": 0, "available": -20}}, entries
    ).ok


def test_dlq_messages_need_an_explanation():
    tasks = {**TASKS, "tsk_" + "c" * 26: T("PENDING")}
    ok, lines = checks.explain_dlq(
        [("results-dlq", f'{{"task_id": "{A}"}}'), ("telemetry-dlq", '{"thing": "d1", "load": 0}')],
        tasks,
        lambda r: True,
        {"d1"},
    )
    assert ok.ok and len(lines) == 2
    stranded, _ = checks.explain_dlq(
        [("tasks-dlq", '{"task_id": "tsk_' + "c" * 26 + '"}')], tasks, lambda r: True, set()
    )
    assert not stranded.ok
    nothing, _ = checks.explain_dlq([("network-dlq", "{}")], tasks, lambda r: True, set())
    assert not nothing.ok


def test_client_view_disagreement_fails():
    good = {"i": 1, "kind": "chat", "status": 200, "task_ids": [A], "attempts": []}
    assert checks.client_view([good], TASKS).ok
    assert not checks.client_view([{**good, "task_ids": [B]}], TASKS).ok
    assert not checks.client_view(
        [
            {
                "i": 2,
                "kind": "task",
                "status": 202,
                "task_ids": [B],
                "task_status": "COMPLETED",
                "attempts": [],
            }
        ],
        TASKS,
    ).ok
    assert not checks.client_view([{**good, "status": 500}], TASKS).ok
