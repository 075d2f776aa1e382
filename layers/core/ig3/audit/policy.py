"""Which completed tasks are audited.

- Every task of a **suspect** device (newcomer, probation, or score below ``suspect_below``;
  ``ig3.audit.reputation.is_suspect``) is audited.
- Otherwise a fraction ``rate`` (env ``IG3_AUDIT_RATE``, default 5%) is sampled. The draw is a
  keyed hash (HMAC-SHA256 with ``IG3_AUDIT_SECRET``) of the task id: deterministic, so a redelivered
  TaskCompleted makes the same decision (at-least-once safe), and unpredictable to devices, which
  see task ids before they answer — with an unkeyed hash a device could compute which of its tasks
  will be audited and cheat only on the others. Devices are never told a task was audited before
  the result is final.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class AuditPolicy:
    rate: float = 0.05
    secret: bytes = b""

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("audit rate must be in [0, 1]")

    @classmethod
    def from_env(cls) -> AuditPolicy:
        return cls(
            rate=float(os.environ.get("IG3_AUDIT_RATE", "0.05")),
            secret=os.environ.get("IG3_AUDIT_SECRET", "").encode(),
        )

    def sampled(self, task_id: str) -> bool:
        digest = hmac.new(self.secret, task_id.encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64 < self.rate

    def decide(self, task_id: str, *, suspect: bool) -> str | None:
        """Why the task is audited (``suspect`` | ``sampled``), or None."""
        if suspect:
            return "suspect"
        return "sampled" if self.sampled(task_id) else None
