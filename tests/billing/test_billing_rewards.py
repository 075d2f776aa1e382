"""Node rewards: iG3's published formulas and numbers, the density table, regional fairness."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ig3.billing.models import LedgerEntry
from ig3.billing.pricing import price_book
from ig3.billing.rewards import DeviceInfo, MappingUptime, RewardsConfig, compute_epoch_rewards
from ig3.billing.rewards_store import MemoryRewardsStore, run_epoch
from ig3.billing.service import BillingService
from ig3.billing.store import MemoryBillingStore

CFG = RewardsConfig.from_env()
WEEK = 7 * 24 * 3600
TOPS = 10**6  # reward units per TOPS (reward_decimals = 6)


def test_epochs_are_weeks_from_thursday_0200_utc():
    start, end = CFG.epoch_bounds(CFG.epoch_of(datetime(2026, 11, 26, 2, 0, tzinfo=UTC).timestamp()))
    assert start == datetime(2026, 11, 26, 2, 0, tzinfo=UTC) and start.weekday() == 3
    assert (end - start).total_seconds() == WEEK
    just_before = datetime(2026, 11, 26, 1, 59, 59, tzinfo=UTC).timestamp()
    assert CFG.epoch_of(just_before) == CFG.epoch_of(start.timestamp()) - 1


def test_density_boost_follows_the_published_table_not_the_formula():
    # The formula would give 1 + 0.07*log10(9) ~ 1.067 for 9 devices and 1.08 for 25+;
    # the table says 1.00 / 1.10.
    table = {
        0: "1",
        9: "1",
        10: "1.03",
        19: "1.03",
        20: "1.08",
        25: "1.10",
        49: "1.10",
        50: "1.12",
        100: "1.14",
        300: "1.17",
        500: "1.19",
        999: "1.19",
        1000: "1.21",
        50_000: "1.21",
    }
    for n, boost in table.items():
        assert CFG.density_boost(n) == Decimal(boost), n


def test_ai_task_score_is_capped_at_two():
    assert CFG.ai_task_score(Decimal(0)) == 1
    assert CFG.ai_task_score(Decimal(5)) == Decimal("1.5")
    assert CFG.ai_task_score(Decimal(10)) == 2 == CFG.ai_task_score(Decimal(1000))


def _entries(device, n, kind="chat", region=None):
    def work(dev, since, until):
        if dev != device:
            return []
        return [
            LedgerEntry(
                f"usage#{device}-{i}",
                "0xu",
                -10,
                "usage",
                since + i,
                f"{device}-{i}",
                details={
                    "usage_kind": kind,
                    "device": device,
                    "region": region,
                    "prompt_tokens": 10,
                    "completion_tokens": 10,
                },
            )
            for i in range(n)
        ]

    return work


def test_blog_examples_base_rewards_and_bonus():
    # "M1 Agent running 97%: 2,333 x 1 x 1"; "M1E running 99%: 2,333 x 1 x 8 = 18,664"
    roster = [DeviceInfo("agent", tier="m1_agent", region="eu"), DeviceInfo("m1e", tier="M1E", region="eu")]
    uptime = MappingUptime({"agent": 0.97 * WEEK, "m1e": 0.99 * WEEK})
    out = {r.device_id: r for r in compute_epoch_rewards(100, CFG, roster, uptime, lambda *a: [])}
    assert out["agent"].base_units == 2333 * TOPS and out["m1e"].base_units == 18_664 * TOPS
    assert out["agent"].bonus_units == 0  # no stake, no bonus
    # Half the week online: the raw ratio (below the full-credit threshold).
    half = compute_epoch_rewards(100, CFG, roster[:1], MappingUptime({"agent": WEEK / 2}), lambda *a: [])[0]
    assert half.base_units == 2333 * TOPS // 2


def test_bonus_pool_staking_weight_task_score_density():
    stake = Decimal(100_000)
    roster = [
        DeviceInfo("a", tier="m1", region="eu", stake=stake, farm_devices=25),
        DeviceInfo("b", tier="m1", region="eu", stake=stake),
        DeviceInfo("c", tier="m1", region="eu", stake=Decimal(1)),
    ]  # under min stake 95,357: no bonus
    uptime = MappingUptime({d.device_id: WEEK for d in roster})
    out = {r.device_id: r for r in compute_epoch_rewards(5, CFG, roster, uptime, _entries("a", 5))}
    pool = 3 * 8000  # bonus per device x devices
    # a: weight 1/2, score 1 + 5/10, boost 1.10 -> 24000 * 0.5 * 1.5 * 1.1 = 19800
    assert out["a"].bonus_units == 19_800 * TOPS
    assert out["b"].bonus_units == pool // 2 * TOPS  # score 1, boost 1
    assert out["c"].bonus_units == 0
    assert out["a"].factors["ai_task_score"] == "1.5" and out["a"].factors["density_boost"] == "1.10"


def test_splitting_stake_across_devices_earns_more_than_concentrating_it():
    big = [DeviceInfo("x", stake=Decimal(400_000)), DeviceInfo("other", stake=Decimal(400_000))]
    split = [
        DeviceInfo("x1", stake=Decimal(200_000)),
        DeviceInfo("x2", stake=Decimal(200_000)),
        DeviceInfo("other", stake=Decimal(400_000)),
    ]
    cfg = RewardsConfig.from_document(
        {**_doc(), "epoch_pool": "30000", "regional_fairness": {"enabled": False}}
    )
    up = MappingUptime({})
    r_big = {r.device_id: r.bonus_units for r in compute_epoch_rewards(1, cfg, big, up, lambda *a: [])}
    r_split = {r.device_id: r.bonus_units for r in compute_epoch_rewards(1, cfg, split, up, lambda *a: [])}
    assert r_split["x1"] + r_split["x2"] > r_big["x"]  # stake^0.8 is concave


def _doc():
    import json

    from ig3.billing.rewards import DEFAULT_REWARDS_PATH

    return json.loads(DEFAULT_REWARDS_PATH.read_text(), parse_float=Decimal)


def test_regional_fairness_raises_rewards_where_demand_outruns_supply():
    # eu: 1 device of 4 online (25% of supply), 75% of demand -> ratio 3 -> sqrt 1.732 -> capped 1.5.
    # us: 3 devices, 25% of demand -> ratio 1/3 -> floored at 1 (fairness never lowers a reward).
    roster = [DeviceInfo("eu1", region="eu")] + [DeviceInfo(f"us{i}", region="us") for i in range(3)]
    uptime = MappingUptime({d.device_id: WEEK for d in roster})
    out = {
        r.device_id: r
        for r in compute_epoch_rewards(7, CFG, roster, uptime, lambda *a: [], demand={"eu": 75, "us": 25})
    }
    assert out["eu1"].factors["regional_fairness"] == "1.5"
    assert out["eu1"].base_units == int(Decimal(2333) * Decimal("1.5") * TOPS)
    assert out["us0"].factors["regional_fairness"] == "1" and out["us0"].base_units == 2333 * TOPS
    # Milder imbalance: eu 50% of demand with 25% of supply -> sqrt(2).
    out = {
        r.device_id: r
        for r in compute_epoch_rewards(7, CFG, roster, uptime, lambda *a: [], demand={"eu": 50, "us": 50})
    }
    assert Decimal(out["eu1"].factors["regional_fairness"]).quantize(Decimal("0.0001")) == Decimal("1.4142")


@given(u1=st.floats(0, WEEK), u2=st.floats(0, WEEK), tasks=st.integers(0, 30), farm=st.integers(0, 2000))
def test_more_uptime_never_pays_less(u1, u2, tasks, farm):
    lo, hi = sorted((u1, u2))
    roster = [DeviceInfo("d", tier="m1e", stake=Decimal(200_000), farm_devices=farm, region="eu")]
    r_lo = compute_epoch_rewards(3, CFG, roster, MappingUptime({"d": lo}), _entries("d", tasks))[0]
    r_hi = compute_epoch_rewards(3, CFG, roster, MappingUptime({"d": hi}), _entries("d", tasks))[0]
    assert 0 <= r_lo.total_units <= r_hi.total_units
    assert r_hi.total_units == r_hi.base_units + r_hi.bonus_units


def test_run_epoch_reads_measured_work_from_the_ledger_and_publishes_once():
    epoch = 10
    start, end = CFG.epoch_bounds(epoch)
    clock = [start.timestamp() + 3600]
    svc = BillingService(MemoryBillingStore(), price_book(), clock=lambda: clock[0])
    svc.credit("0xuser", 10**9, "dep")
    for i in range(4):
        svc.settle(
            f"job-{i}",
            100,
            account="0xuser",
            details={"device": "dev-1", "usage_kind": "chat", "prompt_tokens": 5, "completion_tokens": 5},
        )
    clock[0] = end.timestamp() + 10  # after the epoch: not counted in it
    svc.settle("job-late", 100, account="0xuser", details={"device": "dev-1", "usage_kind": "chat"})
    rewards = MemoryRewardsStore()
    roster = [DeviceInfo("dev-1", tier="m1", stake=Decimal(100_000), region="eu")]
    with pytest.raises(ValueError, match="not ended"):
        run_epoch(
            epoch,
            config=CFG,
            roster=roster,
            uptime=MappingUptime({"dev-1": WEEK}),
            ledger=svc.store,
            rewards=rewards,
            now=end.timestamp() - 1,
        )
    summary = run_epoch(
        epoch,
        config=CFG,
        roster=roster,
        uptime=MappingUptime({"dev-1": WEEK}),
        ledger=svc.store,
        rewards=rewards,
        now=end.timestamp() + 60,
    )
    assert summary == {"epoch": epoch, "devices": 1, "written": 1}
    r = rewards.get("dev-1", epoch)
    assert r.factors["weighted_tasks"] == "4" and r.factors["ai_task_score"] == "1.4"
    again = run_epoch(
        epoch,
        config=CFG,
        roster=roster,
        uptime=MappingUptime({"dev-1": 0}),
        ledger=svc.store,
        rewards=rewards,
        now=end.timestamp() + 60,
    )
    assert again["written"] == 0 and rewards.get("dev-1", epoch) == r  # published results are immutable


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"base_reward": "-1"}, "non-negative"),
        ({"epoch_anchor": "2025-01-02T02:00:00"}, "timezone"),
        ({"density_boost_table": [["10", "0.03"]]}, "min_devices"),
        ({"regional_fairness": {"cap": "0.5"}}, "never lowers"),
    ],
)
def test_bad_rewards_config_is_rejected(patch, message):
    from ig3.billing.rewards import RewardsConfigError

    with pytest.raises(RewardsConfigError, match=message):
        RewardsConfig.from_document({**_doc(), **patch})


def test_device_info_tolerates_registry_records_of_any_shape():
    from ig3.billing.rewards_store import device_info

    assert device_info({"owner": "0xa"}) is None  # no id: not a device
    d = device_info(
        {
            "device_id": "m1",
            "owner": {"not": "a string"},
            "tier": 5,
            "farm_devices": "many",
            "stake": "NaN",
            "location": {"region": "eu-west"},
            "capabilities": {"tier": "m1e"},
        }
    )
    assert (d.owner, d.tier, d.region, d.stake, d.farm_devices) == (None, "m1e", "eu-west", Decimal(0), 0)
