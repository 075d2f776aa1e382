"""Adapts ``ig3.billing`` to the task service's ``Budget`` port (hold before work starts)."""
from __future__ import annotations

from typing import Any

from ig3.billing.models import CHARS_PER_TOKEN_BOUND, TEMPLATE_TOKENS, prompt_token_bound as _bound  # noqa: F401
from ig3.config import dispatch_settings
from ig3.tasks.model import Task

MAX_HOLD_S = 24 * 3600


def prompt_token_bound(task: Task) -> int:
    i = task.input
    chars = len(i.prompt or "") + sum(len(m.content) + 8 for m in i.messages or []) + sum(len(t) for t in i.texts or [])
    return _bound(chars)


class BillingBudget:
    def __init__(self, billing: Any):
        self._billing = billing

    def estimate(self, task: Task) -> int:
        prompt = prompt_token_bound(task)
        max_out = 0 if task.kind == "embedding" else task.limits.max_tokens
        # The route is decided later (edge first, cloud fallback): hold for the dearer one.
        return max(self._billing.estimate(task.model, route, task.kind, prompt, max_out) for route in ("edge", "cloud"))

    def hold(self, task: Task, *, key_id: str | None, key_budget: int | None) -> None:
        s = dispatch_settings()
        per_attempt = float(task.constraints.deadline_s or s.default_deadline_s)
        ttl = min(MAX_HOLD_S, per_attempt * (s.edge_attempts + s.cloud_attempts) + 300)
        self._billing.hold(task.account, task.task_id, self.estimate(task), ttl, key_id=key_id,
                           key_budget=key_budget)

    def release(self, task_id: str) -> None:
        self._billing.release(task_id)
