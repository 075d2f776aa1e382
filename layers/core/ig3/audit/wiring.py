"""Builds the audit service from the environment, once per process.

- Reputations live in the same Redis as the scheduler's live state, under the same prefix
  (``IG3_LIVE_PREFIX``), so side-by-side stages and tests stay apart.
- Audit jobs go to the SQS queue named by ``IG3_QUEUE_AUDIT_URL``. Without it (the topology does
  not declare an audit queue yet) dispatch still records every reputation signal (successes,
  failures, timeouts, signature failures, model-hash mismatches) and quarantines on them, but
  samples no audits: ``task_completed`` is told there is nowhere to send a job.
- The reference auditor's model files (``reference_models``), by sha256:
  ``IG3_AUDIT_MODELS_DIR`` (a local directory: ``ig3 up``, tests) wins; else ``IG3_AUDIT_MODELS_BUCKET``
  (the models bucket, AWS) with ``IG3_AUDIT_MODELS_PREFIX`` (default ``models/``), fetched on demand into
  ``IG3_AUDIT_MODELS_CACHE_DIR`` (default ``/tmp/ig3-models``) within ``IG3_AUDIT_MODELS_CACHE_MB``
  (default 8192); neither: no auditor (jobs are skipped). ``IG3_AUDIT_MAX_LOADED`` models stay loaded
  (default 1), ``IG3_AUDIT_THREADS`` llama.cpp threads (default 1).
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


def _model_event(name: str, fields: dict) -> None:
    from ig3.observability import logger, metrics

    metric = {"downloaded": "AuditModelDownloads", "rejected": "AuditModelRejected",
              "evicted": "AuditModelEvictions"}[name]
    metrics.add_metric(name=metric, unit="Count", value=1)
    if name == "downloaded":
        metrics.add_metric(name="AuditModelDownloadSeconds", unit="Seconds", value=fields["seconds"])
    (logger.error if name == "rejected" else logger.info)(f"reference model {name}", extra=fields)


def reference_models():
    """The ``ModelStore`` the environment selects, or None (no reference copy in this deployment)."""
    models_dir = os.environ.get("IG3_AUDIT_MODELS_DIR")
    if models_dir:
        from ig3.audit.models import LocalModelStore

        return LocalModelStore.from_dir(models_dir)
    bucket = os.environ.get("IG3_AUDIT_MODELS_BUCKET")
    if bucket:
        from ig3.audit.models import DEFAULT_CACHE_DIR, MODELS_PREFIX, CachedModelStore
        from ig3.audit.s3models import S3ModelSource

        return CachedModelStore(
            S3ModelSource(bucket, os.environ.get("IG3_AUDIT_MODELS_PREFIX") or MODELS_PREFIX),
            cache_dir=os.environ.get("IG3_AUDIT_MODELS_CACHE_DIR") or DEFAULT_CACHE_DIR,
            max_bytes=int(os.environ.get("IG3_AUDIT_MODELS_CACHE_MB") or "8192") * 2**20,
            on_event=_model_event,
        )
    return None


@lru_cache(maxsize=1)
def audit_service():
    from ig3 import config
    from ig3.audit.service import AuditService
    from ig3.audit.store import RedisAuditBudget, SqsAuditQueue
    from ig3.events import EventBridgePublisher
    from ig3.redis_client import get_redis
    from ig3.tasks.wiring import live_state

    queue_url = os.environ.get(queue_env("audit"))
    models = reference_models()
    auditor = None
    if models is not None:
        from ig3.audit.rescorer import ReferenceAuditor

        auditor = ReferenceAuditor(models, n_threads=int(os.environ.get("IG3_AUDIT_THREADS") or "1"),
                                   max_loaded=int(os.environ.get("IG3_AUDIT_MAX_LOADED") or "1"))
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
