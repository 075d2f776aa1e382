"""The Telegram bot on the LLM gateway (the ``telegram`` and ``telegram_worker`` functions).

Design:
- Webhook -> API Gateway ``POST /v1/telegram/webhook`` (auth "none": Telegram cannot send our
  credentials; its ``X-Telegram-Bot-Api-Secret-Token`` header, compared in constant time, is the
  auth) -> ``ig3.telegram.bot.WebhookBot``. It answers Telegram at once: commands are answered
  inline; a question gets a placeholder reply and a job on the ``telegram`` SQS queue, so the
  webhook never waits on a model (Telegram retries a webhook that does not answer in time).
- ``ig3.telegram.worker.AnswerWorker`` (SQS trigger) streams the answer from the gateway's
  ``/v1/chat/completions`` and edits the placeholder as tokens arrive, at most one edit per
  ``edit_interval_s`` (Telegram rate-limits edits; an edit per token would get 429s).
- Duplicate updates (Telegram retries by ``update_id``) are claimed with Redis ``SET NX``; a job
  that SQS delivers twice is skipped once its "answered" mark is set.
- Billing: a Telegram user binds a wallet with ``/link`` (a one-time code the wallet's owner
  redeems at ``POST /v1/telegram/link`` with a SIWE-issued bearer token). The worker then calls
  the gateway with a short-lived access token for that wallet, so usage is billed to it.
- The bot token and webhook secret live in Secrets Manager (topology secret ``telegram_bot``).
- The Bot API is reached through python-telegram-bot's ``Bot`` (its ``base_url`` points tests at a
  local stand-in of the Bot API).
"""
