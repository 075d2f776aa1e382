"""deposits function (scheduled): credit confirmed on-chain deposits to the treasury.

Each run reads the blocks that reached N confirmations since the last run (bounded per run)
and credits native transfers and ERC-20 Transfer logs to the treasury, idempotently by
(tx hash, log index) over plain JSON-RPC (ig3.billing.deposits.RpcChain; no web3).
"""

from ig3.observability import logger, metrics, tracer


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    from ig3.billing.deposits import deposits_configured, scanner_from_env

    if not deposits_configured():
        # No chain configured (e.g. the local cloud without a node): nothing to scan, not an error.
        return {"disabled": "set IG3_CHAIN_RPC_URL and IG3_TREASURY_ADDRESS to credit on-chain deposits"}

    result = scanner_from_env().scan_once()
    metrics.add_metric(name="DepositsCredited", unit="Count", value=len(result.credited))
    if result.credited:
        logger.info("deposits credited", extra={"count": len(result.credited), "to_block": result.to_block})
    return {"from_block": result.from_block, "to_block": result.to_block, "credited": len(result.credited)}
