"""Builds the audit service from the environment, once per process.

- Reputations live in the same Redis as the scheduler's live state, under the same prefix
  (``IG3_LIVE_PREFIX``), so side-by-side stages and tests stay apart.
- Audit jobs go to the SQS queue named by ``IG3_QUEUE_AUDIT_URL``. Without it (the topology does
  not declare an audit queue yet) dispatch still records every reputation signal (successes,
  failures, timeouts, signature failures, model-hash mismatches) and quarantines on them, but
  samples no audits: ``task_completed`` is told there is nowhere to send a job.
- The reference auditor reads the GGUF files in ``IG3_AUDIT_MODELS_DIR`` (by sha256).
- The network audit budget: ``IG3_AUDIT_BUDGET_TOKENS`` tokens per UTC day (default 5,000,000).
"""

from __future__ import annotations

import os
from functools import lru_cache

from ig3.topology import queue_env


@lru_cache(maxsize=1)
def reputation_store():
    from ig3.audit.store import RedisReputationStore
    from ig3.redis_client import get_redis

    return RedisReputationStore(get_redis(), prefix=os.environ.get("IG3_LIVE_PREFIX") or "ig3:")


@lru_cache(maxsize=1)
def audit_service():
    from ig3 import config
    from ig3.audit.service import AuditService
    from ig3.audit.store import RedisAuditBudget, SqsAuditQueue
    from ig3.events import EventBridgePublisher
    from ig3.redis_client import get_redis
    from ig3.tasks.wiring import live_state

    queue_url = os.environ.get(queue_env("audit"))
    models_dir = os.environ.get("IG3_AUDIT_MODELS_DIR")
    auditor = None
    if models_dir:
        from ig3.audit.rescorer import ReferenceAuditor

        auditor = ReferenceAuditor.from_dir(models_dir)
    return AuditService(
        store=reputation_store(),
        queue=SqsAuditQueue(queue_url) if queue_url else None,
        events=EventBridgePublisher(config.event_bus()),
        auditor=auditor,
        budget=RedisAuditBudget(
            get_redis(),
            int(os.environ.get("IG3_AUDIT_BUDGET_TOKENS", "5000000")),
            prefix=os.environ.get("IG3_LIVE_PREFIX") or "ig3:",
        ),
        reliability=live_state(),
    )
