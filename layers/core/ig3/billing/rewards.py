"""Node rewards per epoch, following iG3's published reward mechanism. Pure (no AWS imports).

Sources (iG3's public docs and blog, read 2026-11): an epoch is one week from Thursday
02:00 UTC to the next Thursday 02:00 UTC, and::

    TOTAL_REWARD      = BASE_REWARD_POOL + BONUS_REWARD_POOL
    BASE_REWARD_POOL  = BASE_REWARD × UPTIME_RATIO × TIER_MULTIPLIER
    BONUS_REWARD_POOL = EPOCH_POOL × STAKING_WEIGHT × AI_TASK_SCORE × DENSITY_BOOST
    AI_TASK_SCORE     = 1 + min(1, Σ(task_weight_i × success_i) / TASK_WEIGHT_NORM)   (norm default 10)
    STAKING_WEIGHT    = WEIGHT × (DEVICE_STAKING / TOTAL_STAKING), WEIGHT "f(x)^0.8"

Published numbers used as defaults (all configuration, ``rewards.json`` / ``IG3_REWARDS_PATH``):
BASE_REWARD 2,333 TOPS per epoch; tier multipliers M1 Agent 1, M1E 8; bonus pool 8,000 TOPS
per device in the mesh; minimum stake 95,357 TOPS; stake exponent 0.8; TASK_WEIGHT_NORM 10.

Where the sources are silent or disagree, the choice is ours and configurable:
- **Density boost.** The published formula (``1 + 0.08 if farm > 20, 0.03 if > 10, else
  min(0.07·log10(n), 0.25)``) and the published table (10+ 3%, 20+ 8%, 25+ 10%, 50+ 12%,
  100+ 14%, 300+ 17%, 500+ 19%, 1000+ 21%) disagree: the formula caps at 8% above 20 devices
  and gives a 1-9-device farm up to 6.7%, the table grows to 21% and gives nothing below 10.
  **We implement the table** (``density_boost_table``, thresholds are "at least N devices in
  the operator's registered edge farm"); a device outside a farm gets 1.0.
- **Staking weight.** Read as each device's share of Σ stake^0.8 over staked devices (the blog:
  "Weighted Stake = Stake ^ 0.8 ... you earn more by splitting your stakes"). Devices under
  the minimum stake get no bonus.
- **Uptime ratio.** Online seconds / epoch seconds, capped at 1. The blog's worked examples
  pay a full ratio at 97% and 99% uptime, so ratios at or above ``uptime_full_credit_at``
  (default 0.95, an inference from those examples; set it to 1 to pay the raw ratio) count as 1.
- **Task weights.** Not published: ``task_weights`` per kind (chat/completion/task 1,
  embedding 0.25) plus ``task_weight_per_1k_tokens`` (default 0). Measured work is the
  device's completed usage entries in the ledger for the epoch (``success_i`` = 1; failed work
  is never billed, so it never appears — which is what ``× success_i`` says).
- **Verified work only** (issue #13, ``ig3.audit.outcomes``): a task counts when its audit passed on
  its own evidence; never when its audit failed. A device with an integrity failure in the epoch's
  audit window (a failed audit, a forged signature, a result naming another model file) gets credit
  only for work audited clean on its own evidence — its unaudited work and its pooled (retractable)
  sampled-audit passes are withheld. A device with none gets its unaudited work counted once the
  audit window (``audit_window_s`` after the epoch's end, default 900 s) has passed without finding
  it dirty; ``unaudited_work_counts: false`` counts audited-clean work only. Audits are sampled
  (5%), so the second rule is what makes cheating unprofitable: one caught task forfeits the epoch's
  unaudited credit.
- **Tier multiplier for other tiers** (e.g. M1 Mini): not published; ``default_tier_multiplier`` (1).
- **Epoch numbering**: epoch 0 starts at ``epoch_anchor`` (2025-01-02T02:00Z, a Thursday).
- **Regional fairness** (ours, per the architecture): per region, demand share = the region's
  share of the epoch's requests, supply share = its share of online device-seconds; the
  factor ``clamp((demand/supply) ^ exponent, 1, cap)`` multiplies the device's total (or only
  its bonus, ``applies_to``). It only ever raises rewards, where demand outruns supply.

Arithmetic is Decimal with 40 digits; payouts are integers of 10^-``reward_decimals`` TOPS,
rounded down (a payout never exceeds the formula).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal, localcontext
from pathlib import Path
from typing import Any, Protocol

from ig3.audit.outcomes import IntegrityRecord
from ig3.billing.models import LedgerEntry

REWARDS_PATH_ENV = "IG3_REWARDS_PATH"
DEFAULT_REWARDS_PATH = Path(__file__).with_name("rewards.json")
EPOCH = timedelta(days=7)
_PREC = 40


class RewardsConfigError(ValueError):
    pass


def _dec(v: Any, where: str) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, (int, str, Decimal)):
        raise RewardsConfigError(f"{where}: expected a number or decimal string")
    try:
        d = Decimal(v)
    except Exception:  # noqa: BLE001
        raise RewardsConfigError(f"{where}: not a decimal: {v!r}") from None
    if not d.is_finite() or d < 0:
        raise RewardsConfigError(f"{where}: must be finite and non-negative")
    return d


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise RewardsConfigError(f"{where}: expected a non-negative integer")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise RewardsConfigError(f"{where}: expected true or false")
    return v


@dataclass(frozen=True)
class RewardsConfig:
    epoch_anchor: datetime
    base_reward: Decimal
    tier_multipliers: dict[str, Decimal]
    default_tier_multiplier: Decimal
    uptime_full_credit_at: Decimal
    bonus_per_device: Decimal
    epoch_pool: Decimal | None  # fixed pool; else bonus_per_device × devices in the epoch
    min_stake: Decimal
    stake_exponent: Decimal
    task_weight_norm: Decimal
    task_weights: dict[str, Decimal]
    task_weight_per_1k_tokens: Decimal
    density_boost_table: tuple[tuple[int, Decimal], ...]  # (at least N farm devices, bonus), ascending
    fairness_enabled: bool
    fairness_exponent: Decimal
    fairness_cap: Decimal
    fairness_applies_to: str  # "total" | "bonus"
    reward_decimals: int
    audit_window_s: int = 900  # after an epoch ends: how long audits of its work may still land
    unaudited_work_counts: bool = True  # unaudited work of a device with no integrity failure counts

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> RewardsConfig:
        try:
            anchor = datetime.fromisoformat(str(doc.get("epoch_anchor", "2025-01-02T02:00:00+00:00")))
        except ValueError:
            raise RewardsConfigError("epoch_anchor: not an ISO-8601 datetime") from None
        if anchor.tzinfo is None:
            raise RewardsConfigError("epoch_anchor: needs a timezone")
        table = []
        for i, row in enumerate(doc.get("density_boost_table", [])):
            if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], int)):
                raise RewardsConfigError(f"density_boost_table[{i}]: expected [min_devices, bonus]")
            table.append((row[0], _dec(row[1], f"density_boost_table[{i}]")))
        table.sort()
        fair = doc.get("regional_fairness", {})
        applies = fair.get("applies_to", "total")
        if applies not in ("total", "bonus"):
            raise RewardsConfigError("regional_fairness.applies_to: 'total' or 'bonus'")
        pool = doc.get("epoch_pool")
        cap = _dec(fair.get("cap", "1.5"), "regional_fairness.cap")
        if cap < 1:
            raise RewardsConfigError("regional_fairness.cap: must be >= 1 (fairness never lowers rewards)")
        return cls(
            epoch_anchor=anchor.astimezone(UTC),
            base_reward=_dec(doc.get("base_reward", "2333"), "base_reward"),
            tier_multipliers={
                str(k).lower(): _dec(v, f"tier_multipliers.{k}")
                for k, v in doc.get("tier_multipliers", {}).items()
            },
            default_tier_multiplier=_dec(doc.get("default_tier_multiplier", "1"), "default_tier_multiplier"),
            uptime_full_credit_at=_dec(doc.get("uptime_full_credit_at", "1"), "uptime_full_credit_at"),
            bonus_per_device=_dec(doc.get("bonus_per_device", "8000"), "bonus_per_device"),
            epoch_pool=_dec(pool, "epoch_pool") if pool is not None else None,
            min_stake=_dec(doc.get("min_stake", "0"), "min_stake"),
            stake_exponent=_dec(doc.get("stake_exponent", "0.8"), "stake_exponent"),
            task_weight_norm=_dec(doc.get("task_weight_norm", "10"), "task_weight_norm"),
            task_weights={k: _dec(v, f"task_weights.{k}") for k, v in doc.get("task_weights", {}).items()},
            task_weight_per_1k_tokens=_dec(
                doc.get("task_weight_per_1k_tokens", "0"), "task_weight_per_1k_tokens"
            ),
            density_boost_table=tuple(table),
            fairness_enabled=bool(fair.get("enabled", True)),
            fairness_exponent=_dec(fair.get("exponent", "0.5"), "regional_fairness.exponent"),
            fairness_cap=cap,
            fairness_applies_to=applies,
            reward_decimals=int(doc.get("reward_decimals", 6)),
            audit_window_s=_int(doc.get("audit_window_s", 900), "audit_window_s"),
            unaudited_work_counts=_bool(doc.get("unaudited_work_counts", True), "unaudited_work_counts"),
        )

    @classmethod
    def from_env(cls) -> RewardsConfig:
        path = os.environ.get(REWARDS_PATH_ENV) or DEFAULT_REWARDS_PATH
        return cls.from_document(json.loads(Path(path).read_bytes(), parse_float=Decimal))

    # -- epochs -----------------------------------------------------------------------------
    def epoch_of(self, ts: float) -> int:
        return int((datetime.fromtimestamp(ts, UTC) - self.epoch_anchor) // EPOCH)

    def epoch_bounds(self, epoch: int) -> tuple[datetime, datetime]:
        start = self.epoch_anchor + epoch * EPOCH
        return start, start + EPOCH

    # -- the published factors --------------------------------------------------------------
    def tier_multiplier(self, tier: str | None) -> Decimal:
        return self.tier_multipliers.get((tier or "").lower(), self.default_tier_multiplier)

    def uptime_ratio(self, online_s: float | Decimal, epoch_s: float | Decimal) -> Decimal:
        ratio = min(Decimal(1), max(Decimal(0), Decimal(str(online_s)) / Decimal(str(epoch_s))))
        return Decimal(1) if ratio >= self.uptime_full_credit_at else ratio

    def density_boost(self, farm_devices: int) -> Decimal:
        bonus = Decimal(0)
        for threshold, value in self.density_boost_table:
            if farm_devices >= threshold:
                bonus = value
        return 1 + bonus

    def task_weight(self, kind: str, tokens: int) -> Decimal:
        return (
            self.task_weights.get(kind, Decimal(1)) + self.task_weight_per_1k_tokens * Decimal(tokens) / 1000
        )

    def ai_task_score(self, weighted_successes: Decimal) -> Decimal:
        if self.task_weight_norm == 0:
            return Decimal(2) if weighted_successes > 0 else Decimal(1)
        return 1 + min(Decimal(1), weighted_successes / self.task_weight_norm)

    def counts_task(self, task_id: str, record: IntegrityRecord | None) -> bool:
        """Whether one completed task counts toward the AI task score (the rules in the module doc)."""
        if record is None:  # no audit outcomes source: every completed task (rewards before issue #13)
            return True
        if task_id in record.dirty:
            return False
        if task_id in record.clean:
            return True
        if record.failures:
            return False
        return task_id in record.provisional or self.unaudited_work_counts

    def to_units(self, tops: Decimal) -> int:
        return int((tops * (Decimal(10) ** self.reward_decimals)).to_integral_value(rounding=ROUND_DOWN))


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    owner: str | None = None
    tier: str | None = None
    region: str | None = None
    stake: Decimal = Decimal(0)  # TOPS staked on this device
    farm_devices: int = 0  # devices in the operator's registered edge farm (0: not a farm)


class DeviceRoster(Protocol):
    def devices(self) -> list[DeviceInfo]: ...


class UptimeSource(Protocol):
    """Seconds each device was online within [start, end) — from heartbeats (the scheduler's)."""

    def online_seconds(self, device_ids: list[str], start: datetime, end: datetime) -> dict[str, float]: ...


@dataclass(frozen=True)
class DeviceReward:
    device_id: str
    epoch: int
    owner: str | None
    region: str | None
    base_units: int
    bonus_units: int
    total_units: int
    factors: dict[str, str] = field(default_factory=dict)  # exact decimal inputs, for audit

    def as_dict(self, decimals: int) -> dict[str, Any]:
        scale = Decimal(10) ** decimals
        return {
            "device_id": self.device_id,
            "epoch": self.epoch,
            "owner": self.owner,
            "region": self.region,
            "base": str(Decimal(self.base_units) / scale),
            "bonus": str(Decimal(self.bonus_units) / scale),
            "total": str(Decimal(self.total_units) / scale),
            "total_units": self.total_units,
            "unit_decimals": decimals,
            "factors": self.factors,
        }


def compute_epoch_rewards(
    epoch: int,
    config: RewardsConfig,
    roster: Iterable[DeviceInfo],
    uptime: UptimeSource,
    work: Callable[[str, int, int], Iterable[LedgerEntry]],
    demand: dict[str, int] | None = None,
    integrity: Callable[[str, int, int], IntegrityRecord] | None = None,
) -> list[DeviceReward]:
    """Rewards for every device in the roster for one epoch.

    ``work(device, since_ms, until_ms)`` yields the device's ledger entries in the epoch;
    ``demand`` is requests per originating region (defaults to the regions of served work);
    ``integrity(device, since_ms, until_ms)`` its audit outcomes from the epoch's start to the end
    of its audit window (None: every completed task counts).
    """
    devices = list(roster)
    start, end = config.epoch_bounds(epoch)
    epoch_s = Decimal(int(EPOCH.total_seconds()))
    since_ms, until_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    online = uptime.online_seconds([d.device_id for d in devices], start, end)
    with localcontext() as ctx:
        ctx.prec = _PREC
        weighted: dict[str, Decimal] = {}
        served_by_region: dict[str, int] = defaultdict(int)
        tally: dict[str, tuple[int, int, int]] = {}  # counted, withheld, integrity failures
        window_end_ms = until_ms + config.audit_window_s * 1000
        for d in devices:
            total = Decimal(0)
            record = integrity(d.device_id, since_ms, window_end_ms) if integrity is not None else None
            counted = withheld = 0
            for e in work(d.device_id, since_ms, until_ms):
                if e.kind != "usage":
                    continue
                # Served demand counts regardless (fairness measures requests, not their honesty).
                served_by_region[str(e.details.get("region") or d.region or "unknown")] += 1
                if not config.counts_task(e.reference, record):
                    withheld += 1
                    continue
                counted += 1
                tokens = int(e.details.get("prompt_tokens", 0)) + int(e.details.get("completion_tokens", 0))
                total += config.task_weight(str(e.details.get("usage_kind", "task")), tokens)
            weighted[d.device_id] = total
            tally[d.device_id] = (counted, withheld, record.failures if record else 0)
        demand = dict(demand) if demand is not None else dict(served_by_region)
        supply: dict[str, Decimal] = defaultdict(Decimal)
        for d in devices:
            supply[d.region or "unknown"] += Decimal(str(online.get(d.device_id, 0)))
        fairness = _fairness(config, demand, supply)

        staked = {
            d.device_id: d.stake**config.stake_exponent
            for d in devices
            if d.stake > 0 and d.stake >= config.min_stake
        }
        stake_total = sum(staked.values(), Decimal(0))
        pool = config.epoch_pool if config.epoch_pool is not None else config.bonus_per_device * len(devices)

        out = []
        for d in devices:
            uptime_ratio = config.uptime_ratio(online.get(d.device_id, 0), epoch_s)
            tier = config.tier_multiplier(d.tier)
            base = config.base_reward * uptime_ratio * tier
            weight = (
                staked[d.device_id] / stake_total if d.device_id in staked and stake_total > 0 else Decimal(0)
            )
            score = config.ai_task_score(weighted[d.device_id])
            boost = config.density_boost(d.farm_devices)
            bonus = pool * weight * score * boost
            fair = fairness.get(d.region or "unknown", Decimal(1))
            if config.fairness_applies_to == "bonus":
                bonus, total = bonus * fair, base + bonus * fair
            else:
                base, bonus = base * fair, bonus * fair
                total = base + bonus
            base_u, bonus_u = config.to_units(base), config.to_units(bonus)
            out.append(
                DeviceReward(
                    device_id=d.device_id,
                    epoch=epoch,
                    owner=d.owner,
                    region=d.region,
                    base_units=base_u,
                    bonus_units=bonus_u,
                    total_units=base_u + bonus_u,
                    factors={
                        "uptime_ratio": str(uptime_ratio),
                        "tier_multiplier": str(tier),
                        "staking_weight": str(weight),
                        "ai_task_score": str(score),
                        "weighted_tasks": str(weighted[d.device_id]),
                        "tasks_counted": str(tally[d.device_id][0]),
                        "tasks_withheld": str(tally[d.device_id][1]),
                        "integrity_failures": str(tally[d.device_id][2]),
                        "density_boost": str(boost),
                        "regional_fairness": str(fair),
                        "epoch_pool": str(pool),
                        "base_reward": str(config.base_reward),
                    },
                )
            )
        return out


def _fairness(
    config: RewardsConfig, demand: dict[str, int], supply: dict[str, Decimal]
) -> dict[str, Decimal]:
    if not config.fairness_enabled:
        return {}
    total_demand = Decimal(sum(demand.values()))
    total_supply = sum(supply.values(), Decimal(0))
    if total_demand == 0 or total_supply == 0:
        return {}
    out = {}
    for region, region_supply in supply.items():
        d_share = Decimal(demand.get(region, 0)) / total_demand
        if region_supply == 0:
            factor = config.fairness_cap if d_share > 0 else Decimal(1)
        else:
            ratio = d_share / (region_supply / total_supply)
            factor = ratio**config.fairness_exponent if ratio > 0 else Decimal(0)
        out[region] = min(config.fairness_cap, max(Decimal(1), factor))
    return out


class MappingUptime:
    """Uptime from a precomputed mapping (tests, operator runs from an exported heartbeat report)."""

    def __init__(self, seconds: dict[str, float]):
        self._seconds = dict(seconds)

    def online_seconds(self, device_ids: list[str], start: datetime, end: datetime) -> dict[str, float]:
        return {d: self._seconds.get(d, 0.0) for d in device_ids}
