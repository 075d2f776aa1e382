"""One ``ig3 up`` (tiny models, one edge device) for all client tests, with the Telegram bot's
settings pointing at a local Bot API stand-in started first."""
from __future__ import annotations

import pytest

from tests.clients.botapi_standin import BOT_TOKEN, EDIT_INTERVAL_S, WEBHOOK_SECRET, BotApiStandIn
from tests.e2e.conftest import start_cloud, stop_cloud


@pytest.fixture(scope="session")
def botapi():
    stand_in = BotApiStandIn(BOT_TOKEN).start()
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="session")
def client_cloud(tmp_path_factory, botapi):
    cloud = start_cloud(tmp_path_factory.mktemp("clients"), devices=1, extra_env={
        "IG3_TELEGRAM_BOT_TOKEN": BOT_TOKEN, "IG3_TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "IG3_TELEGRAM_API_URL": botapi.url, "IG3_TELEGRAM_EDIT_INTERVAL_S": str(EDIT_INTERVAL_S),
        "IG3_TELEGRAM_MAX_TOKENS": "48",
    })
    yield cloud
    stop_cloud(cloud)
