"""rewards function (scheduled, Thursdays 02:15 UTC): publish the epoch that just ended.

Epochs end Thursday 02:00 UTC; the 15-minute grace lets the last usage events of the epoch
reach the ledger first, and the audit window (``audit_window_s``) lets the audits of its last work
land: only verified work counts (``ig3.audit.outcomes``). Results per (device, epoch) are written once and never changed, so
running it again (a retry, the local cloud's frequent timer) writes nothing new.
"""

import time

from ig3.audit.outcomes import DynamoOutcomeStore
from ig3.billing.dynamo import DynamoBillingStore
from ig3.billing.presence import DynamoPresenceStore, PresenceUptime
from ig3.billing.rewards import RewardsConfig
from ig3.billing.rewards_store import DynamoDeviceRoster, DynamoRewardsStore, run_epoch
from ig3.config import table_name
from ig3.observability import logger, metrics, tracer

GRACE_S = 15 * 60


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    config = RewardsConfig.from_env()
    now = time.time()
    # The last epoch that ended at least the grace (and its audit window) ago.
    epoch = config.epoch_of(now - max(GRACE_S, config.audit_window_s)) - 1
    summary = run_epoch(
        epoch,
        config=config,
        roster=DynamoDeviceRoster(table_name("devices")).devices(),
        uptime=PresenceUptime(DynamoPresenceStore.from_env()),
        ledger=DynamoBillingStore.from_env(),
        rewards=DynamoRewardsStore.from_env(),
        now=now,
        outcomes=DynamoOutcomeStore.from_env(),
    )
    metrics.add_metric(name="RewardsPublished", unit="Count", value=summary["written"])
    if summary["written"]:
        logger.info("epoch rewards published", extra=summary)
    return summary
