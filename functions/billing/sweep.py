"""billing_sweep function (scheduled, every minute): release holds whose TTL passed.

Abandoned work (a client that vanished, a request that never produced a usage event) must
not keep a balance reserved. Each release is conditioned on the hold still being active, so
a sweep racing a settle cannot release what was just charged.
"""

from ig3.billing.wiring import billing_service
from ig3.observability import logger, metrics, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    expired = billing_service().expire_holds()
    metrics.add_metric(name="HoldsExpired", unit="Count", value=expired)
    if expired:
        logger.info("expired holds released", extra={"count": expired})
    return {"expired": expired}
