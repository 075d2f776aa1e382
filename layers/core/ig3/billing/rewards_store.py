"""Where computed epoch rewards live, where the roster comes from, and the epoch job.

Rewards for (device, epoch) are written once with ``attribute_not_exists``: an epoch's
result is immutable once published, and re-running the job (a retry, a second operator)
writes nothing new. ``run_epoch`` refuses an epoch that has not ended yet.

Operator entry point (uptime is an input: a JSON object ``{device_id: online_seconds}``
exported from the heartbeat records, which the scheduler owns)::

    python -m ig3.billing.rewards_store --epoch 99 --uptime uptime.json
"""

from __future__ import annotations

import json
import sys
import time
from decimal import Decimal
from typing import Any, Protocol

from ig3.audit.outcomes import IntegrityRecord, OutcomeStore
from ig3.billing.rewards import DeviceInfo, DeviceReward, RewardsConfig, UptimeSource, compute_epoch_rewards
from ig3.billing.store import BillingStore


def epoch_key(epoch: int) -> str:
    return f"{epoch:08d}"


class RewardsStore(Protocol):
    def put(self, reward: DeviceReward) -> bool: ...

    def get(self, device_id: str, epoch: int) -> DeviceReward | None: ...

    def recent(self, device_id: str, limit: int) -> list[DeviceReward]: ...


class MemoryRewardsStore:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], DeviceReward] = {}

    def put(self, reward: DeviceReward) -> bool:
        key = (reward.device_id, reward.epoch)
        if key in self.rows:
            return False
        self.rows[key] = reward
        return True

    def get(self, device_id: str, epoch: int) -> DeviceReward | None:
        return self.rows.get((device_id, epoch))

    def recent(self, device_id: str, limit: int) -> list[DeviceReward]:
        rows = sorted((r for (d, _), r in self.rows.items() if d == device_id), key=lambda r: -r.epoch)
        return rows[:limit]


class DynamoRewardsStore:
    def __init__(self, table: str, client: Any | None = None):
        self.table = table
        self._client = client

    @classmethod
    def from_env(cls) -> DynamoRewardsStore:
        from ig3.config import table_name

        return cls(table_name("rewards"))

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("dynamodb")
        return self._client

    def put(self, reward: DeviceReward) -> bool:
        item = {
            "device_id": {"S": reward.device_id},
            "epoch": {"S": epoch_key(reward.epoch)},
            "base_units": {"N": str(reward.base_units)},
            "bonus_units": {"N": str(reward.bonus_units)},
            "total_units": {"N": str(reward.total_units)},
            "factors": {"S": json.dumps(reward.factors)},
        }
        if reward.owner:
            item["owner"] = {"S": reward.owner}
        if reward.region:
            item["region"] = {"S": reward.region}
        try:
            self.client.put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(device_id)"
            )
            return True
        except self.client.exceptions.ConditionalCheckFailedException:
            return False

    @staticmethod
    def _reward(item: dict[str, Any]) -> DeviceReward:
        return DeviceReward(
            device_id=item["device_id"]["S"],
            epoch=int(item["epoch"]["S"]),
            owner=item.get("owner", {}).get("S"),
            region=item.get("region", {}).get("S"),
            base_units=int(item["base_units"]["N"]),
            bonus_units=int(item["bonus_units"]["N"]),
            total_units=int(item["total_units"]["N"]),
            factors=json.loads(item["factors"]["S"]),
        )

    def get(self, device_id: str, epoch: int) -> DeviceReward | None:
        item = self.client.get_item(
            TableName=self.table, Key={"device_id": {"S": device_id}, "epoch": {"S": epoch_key(epoch)}}
        ).get("Item")
        return self._reward(item) if item else None

    def recent(self, device_id: str, limit: int) -> list[DeviceReward]:
        resp = self.client.query(
            TableName=self.table,
            KeyConditionExpression="device_id = :d",
            ExpressionAttributeValues={":d": {"S": device_id}},
            ScanIndexForward=False,
            Limit=limit,
        )
        return [self._reward(i) for i in resp.get("Items", [])]


def _doc(item: dict[str, Any]) -> dict[str, Any]:
    """A device record: the registry stores a JSON ``doc`` (plus top-level keys for its indexes)."""
    doc: dict[str, Any] = {}
    if "doc" in item and "S" in item["doc"]:
        try:
            doc = json.loads(item["doc"]["S"])
        except ValueError:
            doc = {}
    for k, v in item.items():
        if k != "doc" and isinstance(v, dict) and len(v) == 1:
            ((t, val),) = v.items()
            doc.setdefault(k, val if t != "N" else Decimal(val))
    return doc


def _text(*values: Any) -> str | None:
    for v in values:
        if isinstance(v, str) and v:
            return v
    return None


def device_info(doc: dict[str, Any]) -> DeviceInfo | None:
    """A registry record -> reward inputs; fields of unexpected types count as absent."""
    device_id = _text(doc.get("device_id"))
    if not device_id:
        return None
    location = doc.get("location") if isinstance(doc.get("location"), dict) else {}
    capabilities = doc.get("capabilities") if isinstance(doc.get("capabilities"), dict) else {}
    try:
        stake = Decimal(str(doc.get("stake", 0) or 0))
    except Exception:  # noqa: BLE001
        stake = Decimal(0)
    try:
        farm = max(0, int(doc.get("farm_devices") or 0))
    except (TypeError, ValueError):
        farm = 0
    return DeviceInfo(
        device_id=device_id,
        owner=_text(doc.get("owner")),
        tier=_text(doc.get("tier"), capabilities.get("tier")),
        region=_text(doc.get("region"), location.get("region")),
        stake=stake if stake.is_finite() and stake > 0 else Decimal(0),
        farm_devices=farm,
    )


class DynamoDeviceRoster:
    """Every registered device, read from the registry (``devices`` table), tolerant of its shape."""

    def __init__(self, table: str, client: Any | None = None):
        self.table = table
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from ig3.aws import client

            self._client = client("dynamodb")
        return self._client

    def devices(self) -> list[DeviceInfo]:
        out, args = [], {"TableName": self.table}
        while True:
            resp = self.client.scan(**args)
            out += [info for info in (device_info(_doc(i)) for i in resp.get("Items", [])) if info]
            if "LastEvaluatedKey" not in resp:
                return out
            args["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def run_epoch(
    epoch: int,
    *,
    config: RewardsConfig,
    roster: list[DeviceInfo],
    uptime: UptimeSource,
    ledger: BillingStore,
    rewards: RewardsStore,
    now: float | None = None,
    outcomes: OutcomeStore | None = None,
) -> dict[str, int]:
    """``outcomes``: audit outcomes (``ig3.audit.outcomes``); only verified work counts. The epoch is
    refused until its audit window has passed too: a published reward is never changed."""
    _, end = config.epoch_bounds(epoch)
    window = config.audit_window_s if outcomes is not None else 0
    if (now if now is not None else time.time()) < end.timestamp() + window:
        raise ValueError(f"epoch {epoch} has not ended yet, audit window included (ends {end.isoformat()} "
                         f"+ {window} s)")
    integrity = (lambda d, a, b: IntegrityRecord.of(outcomes.rows(d, a, b))) if outcomes is not None else None
    results = compute_epoch_rewards(
        epoch, config, roster, uptime, lambda d, a, b: ledger.entries_for_device(d, since_ms=a, until_ms=b),
        integrity=integrity,
    )
    written = sum(1 for r in results if rewards.put(r))
    return {"epoch": epoch, "devices": len(results), "written": written}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ig3.audit.outcomes import DynamoOutcomeStore
    from ig3.billing.dynamo import DynamoBillingStore
    from ig3.billing.rewards import MappingUptime
    from ig3.config import table_name

    p = argparse.ArgumentParser(
        prog="python -m ig3.billing.rewards_store", description="Publish one epoch's rewards."
    )
    p.add_argument("--epoch", type=int, required=True)
    p.add_argument("--uptime", required=True, help="JSON file: {device_id: online seconds in the epoch}")
    args = p.parse_args(argv)
    with open(args.uptime, "rb") as f:
        uptime = MappingUptime({k: float(v) for k, v in json.load(f).items()})
    summary = run_epoch(
        args.epoch,
        config=RewardsConfig.from_env(),
        roster=DynamoDeviceRoster(table_name("devices")).devices(),
        uptime=uptime,
        ledger=DynamoBillingStore.from_env(),
        rewards=DynamoRewardsStore.from_env(),
        outcomes=DynamoOutcomeStore.from_env(),
    )
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
