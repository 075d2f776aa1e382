"""The chaos run's invariants, as pure functions over what the run collected (no AWS, no I/O).

Each check returns a ``Check``: its name, whether it held, and the evidence (counts, and the
first offending ids). The run prints them all and fails if any did not hold.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("COMPLETED", "FAILED")
SHOW = 5  # offending ids shown per check
_ID = re.compile(r"\b(tsk_[0-9a-f]{20,40}|req_[0-9a-f]{32})\b")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    bad: list[str] = field(default_factory=list)


def one_terminal_state(
    tasks: dict[str, dict[str, Any]], events: Iterable[tuple[str, dict[str, Any]]]
) -> Check:
    """Every task is COMPLETED or FAILED, and its terminal events (at-least-once, so perhaps
    re-published under the same event id) name that one state and one attempt."""
    by_task: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for kind, detail in events:
        if kind in ("TaskCompleted", "TaskFailed"):
            by_task[detail["task_id"]].add((kind, int(detail.get("attempt") or 0)))
    open_ = [t for t, doc in tasks.items() if doc["status"] not in TERMINAL]
    twice = [t for t, seen in by_task.items() if len(seen) > 1]
    disagree = [
        t
        for t, doc in tasks.items()
        if doc["status"] in TERMINAL
        and by_task.get(t)
        and {k for k, _ in by_task[t]} != {"TaskCompleted" if doc["status"] == "COMPLETED" else "TaskFailed"}
    ]
    silent = [t for t, doc in tasks.items() if doc["status"] in TERMINAL and t not in by_task]
    unknown = [t for t in by_task if t not in tasks]
    bad = open_ + twice + disagree + silent + unknown
    return Check(
        "every task reached exactly one terminal state",
        not bad,
        f"{len(tasks)} tasks; not terminal {len(open_)}; two terminal transitions {len(twice)}; "
        f"event disagrees with record {len(disagree)}; terminal without event {len(silent)}; "
        f"events for unknown tasks {len(unknown)}",
        bad[:SHOW],
    )


def completed_once(tasks: dict[str, dict[str, Any]], events: Iterable[tuple[str, dict[str, Any]]]) -> Check:
    """No task completed twice: one TaskCompleted transition (one event id, one attempt, one device)."""
    seen: dict[str, set[tuple[Any, Any, Any]]] = defaultdict(set)
    for kind, detail in events:
        if kind == "TaskCompleted":
            seen[detail["task_id"]].add((detail.get("event_id"), detail.get("attempt"), detail.get("device")))
    twice = [t for t, s in seen.items() if len(s) > 1]
    n = sum(1 for d in tasks.values() if d["status"] == "COMPLETED")
    return Check(
        "no task completed twice",
        not twice,
        f"{n} completed; {len(twice)} with more than one completion",
        twice[:SHOW],
    )


def billing(
    tasks: dict[str, dict[str, Any]],
    entries: list[dict[str, Any]],
    failed_holds: dict[str, str | None],
    expected_cost: Callable[[dict[str, Any]], int],
    llm_cloud_ok: set[str],
) -> list[Check]:
    """Completed tasks billed exactly once at the price book's cost (capped by the hold); failed
    tasks never billed, their holds released; no usage entry that no task or request explains."""
    usage = [e for e in entries if e["kind"] == "usage"]
    per_ref = Counter(e["reference"] for e in usage)
    by_ref = {e["reference"]: e for e in usage}
    completed = [t for t, d in tasks.items() if d["status"] == "COMPLETED"]
    failed = [t for t, d in tasks.items() if d["status"] == "FAILED"]
    unbilled = [t for t in completed if per_ref[t] == 0]
    twice = [r for r, n in per_ref.items() if n > 1]
    wrong = []
    for t in completed:
        e = by_ref.get(t)
        if e is None:
            continue
        cost = expected_cost(tasks[t])
        if e["requested_amount"] != cost or not (-cost <= e["amount"] <= 0):
            wrong.append(
                f"{t} (charged {-e['amount']}, requested {e['requested_amount']}, price book {cost})"
            )
    billed_failed = [t for t in failed if per_ref[t]]
    held_failed = [t for t in failed if failed_holds.get(t) == "active"]
    stray = [r for r in per_ref if r not in tasks and r not in llm_cloud_ok]
    total = -sum(e["amount"] for e in usage)
    return [
        Check(
            "every completed task billed exactly once",
            not (unbilled or twice),
            f"{len(completed)} completed; unbilled {len(unbilled)}; billed more than once {len(twice)}; "
            f"charged in all {total} micro-credits",
            (unbilled + twice)[:SHOW],
        ),
        Check(
            "each charge is the price book's for the work the task record shows",
            not wrong,
            f"{len(completed) - len(wrong)} of {len(completed)} charges agree; {len(wrong)} differ",
            wrong[:SHOW],
        ),
        Check(
            "failed tasks never billed",
            not (billed_failed or held_failed),
            f"{len(failed)} failed; billed {len(billed_failed)}; hold still active {len(held_failed)}",
            (billed_failed + held_failed)[:SHOW],
        ),
        Check(
            "every usage entry explained",
            not stray,
            f"{len(usage)} usage entries: {len(usage) - len(stray)} for tasks or answered cloud-route "
            f"requests, {len(stray)} unexplained",
            stray[:SHOW],
        ),
    ]


def ledger(
    reconcile_ok: bool,
    mismatches: list[dict[str, Any]],
    active_holds: int,
    accounts: dict[str, dict[str, int]],
    entries: list[dict[str, Any]],
) -> Check:
    """``ig3.billing.reconcile`` finds no mismatch, no hold is left active, and each balance is
    exactly the sum of that account's entries (recomputed here, independently)."""
    sums: dict[str, int] = defaultdict(int)
    for e in entries:
        sums[e["account"]] += e["amount"]
    off = [
        f"{a}: balance {r['balance']} != entries {sums[a]}"
        for a, r in accounts.items()
        if r["balance"] != sums[a]
    ]
    off += [f"{a}: held {r['held']} at rest" for a, r in accounts.items() if r["held"] != 0]
    ok = reconcile_ok and active_holds == 0 and not off
    return Check(
        "the ledger reconciles to the balances exactly",
        ok,
        f"reconcile {'ok' if reconcile_ok else 'MISMATCH'} ({len(mismatches)} mismatches); "
        f"{len(accounts)} accounts, {len(entries)} entries; active holds {active_holds}",
        (off + [str(m) for m in mismatches])[:SHOW],
    )


def explain_dlq(
    messages: list[tuple[str, str]],
    tasks: dict[str, dict[str, Any]],
    billed_ok: Callable[[str], bool],
    live_things: set[str],
) -> tuple[Check, list[str]]:
    """Every DLQ message is explained: it names a task that nonetheless reached its one terminal
    state (and, for a usage event, whose ledger state is right), or it is a heartbeat of a device
    that is live again. Returns the check and one explanation line per message."""
    lines, bad = [], []
    for queue, body in messages:
        ids = set(_ID.findall(body))
        things = set(re.findall(r'"thing"\s*:\s*"([^"]+)"', body))
        why = None
        if queue.startswith("billing") and ids and all(billed_ok(i) for i in ids):
            why = "usage event for requests whose ledger state is correct"
        elif (
            ids
            and all(tasks.get(i, {}).get("status") in TERMINAL for i in ids)
            and not queue.startswith("billing")
        ):
            why = "message for tasks that reached their terminal state by another path"
        elif queue.startswith("telemetry") and things and things <= live_things:
            why = "heartbeat of devices that are live again (superseded by later beats)"
        lines.append(
            f"{queue}: {why or 'UNEXPLAINED'} ({', '.join(sorted(ids | things))[:120] or body[:120]})"
        )
        if why is None:
            bad.append(f"{queue}: {body[:160]}")
    return Check(
        "no message left in a DLQ unexplained",
        not bad,
        f"{len(messages)} DLQ messages, {len(messages) - len(bad)} explained",
        bad[:SHOW],
    ), lines


def client_view(requests: list[dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> Check:
    """What clients saw agrees with the records: every request got one final answer; a 200 with a
    task id means the task COMPLETED; a polled task's terminal status is the record's."""
    bad = []
    for r in requests:
        final = r["status"]
        if final == -1 or final >= 500 and final not in (502, 503, 504):
            bad.append(f"#{r['i']} {r['kind']}: final status {final}")
        if r["kind"] == "task":
            for t in r["task_ids"]:
                if r.get("task_status") != tasks.get(t, {}).get("status"):
                    bad.append(
                        f"#{r['i']} task {t}: client saw {r.get('task_status')}, record "
                        f"{tasks.get(t, {}).get('status')}"
                    )
        elif final == 200 and r["task_ids"]:
            t = r["task_ids"][-1]
            if tasks.get(t, {}).get("status") != "COMPLETED":
                bad.append(f"#{r['i']} {r['kind']}: 200 but task {t} is {tasks.get(t, {}).get('status')}")
        if r["kind"] == "stream" and final == 200 and not (r.get("stream") or {}).get("done"):
            bad.append(f"#{r['i']} stream: no [DONE]")
    return Check(
        "clients' answers agree with the task records",
        not bad,
        f"{len(requests)} requests; {len(bad)} disagreements",
        bad[:SHOW],
    )
