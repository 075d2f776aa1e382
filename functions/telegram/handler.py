"""telegram function: ``POST /v1/telegram/webhook`` (Telegram's updates) and
``POST /v1/telegram/link`` (a wallet redeems a /link code). Thin: parse, call ig3.telegram, answer.

The webhook answers 200 for every update it accepted (also duplicates and ignored kinds), 401
for a wrong secret token; model work is queued, so the answer comes well inside Telegram's timeout.
"""
from aws_lambda_powertools.event_handler.router import APIGatewayRouter
from aws_lambda_powertools.logging import correlation_paths
from pydantic import BaseModel, ConfigDict, Field

from ig3.api.app import build_resolver
from ig3.api.http import current_principal, json_response, parse_body
from ig3.errors import BadRequest, NotFound
from ig3.observability import logger, metrics, tracer

router = APIGatewayRouter()
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES = 1 << 20


@router.post("/v1/telegram/webhook")
def webhook():
    from ig3.telegram import runtime
    from ig3.telegram.bot import SqsJobQueue, WebhookBot, check_secret

    s = runtime.settings()
    check_secret(s, router.current_event.get_header_value(SECRET_HEADER, case_sensitive=False))
    body = router.current_event.body or ""
    if len(body) > MAX_UPDATE_BYTES:
        raise BadRequest("update too large", code="invalid_update")
    try:
        raw = router.current_event.json_body
    except ValueError:
        raise BadRequest("body is not JSON", code="invalid_update") from None
    jobs = SqsJobQueue(runtime.queue_url())
    outcome = runtime.run_with_clients(
        lambda bot, gw: WebhookBot(s, runtime.store(), jobs, bot, gw).handle(raw))
    logger.info("telegram update", extra={"outcome": outcome})
    metrics.add_metric(name="TelegramUpdate", unit="Count", value=1)
    return json_response(200, {"ok": True, "outcome": outcome})


class LinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=8, max_length=128)


@router.post("/v1/telegram/link")
def link():
    from ig3.telegram import runtime

    principal = current_principal(router)
    body = parse_body(router, LinkRequest)
    user_id = runtime.store().redeem_link_code(body.code, principal.subject)
    if user_id is None:
        raise NotFound("link code unknown, expired or already used: send /link to the bot again",
                       code="link_code_not_found")

    async def tell(bot, _gw):
        await bot.send_message(chat_id=user_id, text=f"Linked to wallet {principal.subject}. Usage is billed to it.")

    runtime.run_with_clients(tell)
    return json_response(200, {"linked": True, "wallet": principal.subject, "telegram_user": user_id})


app = build_resolver([router])


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return app.resolve(event, context)
