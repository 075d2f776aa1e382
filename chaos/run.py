"""Orchestrates one chaos run (``make chaos`` / ``python -m chaos``). Settings from the environment:

| env | default | |
|---|---|---|
| ``CHAOS_TASKS`` | 10000 | requests through the public API (chat, stream, embeddings, tasks) |
| ``CHAOS_DEVICES`` | 50 | simulated devices (tiny models) |
| ``CHAOS_CONCURRENCY`` | 32 | concurrent clients in the load process |
| ``CHAOS_KILL_FRACTION`` | 0.2 | devices killed (SIGKILL) mid-task, then restarted |
| ``CHAOS_CHEAT_FRACTION`` | 0.05 | devices answering garbage or forged results (rounded up; one of each) |
| ``CHAOS_REDIS_DOWN_S`` | 10 | how long Redis is stopped |
| ``CHAOS_TIME_LIMIT_S`` | 7200 | the whole run's bound (load + drain); past it the run fails |
| ``CHAOS_DRAIN_S`` | 600 | after the load: how long to wait for every task and hold to settle |
| ``CHAOS_SEED`` | 12 | chooses the cheaters, the victims and the request mix |

The faults, placed by the load's progress: devices killed one by one between 10% and 80% (each
chosen at random among those holding work at that moment, restarted 2-6 s later), the broker
restarted at 30%, Redis stopped at 55%. The cloud runs in this process (the ``LocalCloud`` that
``ig3 up`` runs) because the fleet's kill/restart hooks live on it; the clients run in another.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from chaos import checks
from chaos.services import MosquittoBroker, RedisServer, free_port


def env_num(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


class Settings:
    def __init__(self) -> None:
        self.tasks = int(env_num("CHAOS_TASKS", 10_000))
        self.devices = int(env_num("CHAOS_DEVICES", 50))
        self.concurrency = int(env_num("CHAOS_CONCURRENCY", 32))
        self.kill_fraction = env_num("CHAOS_KILL_FRACTION", 0.2)
        self.cheat_fraction = env_num("CHAOS_CHEAT_FRACTION", 0.05)
        self.redis_down_s = env_num("CHAOS_REDIS_DOWN_S", 10)
        self.time_limit_s = env_num("CHAOS_TIME_LIMIT_S", 7200)
        self.drain_s = env_num("CHAOS_DRAIN_S", 600)
        self.seed = int(env_num("CHAOS_SEED", 12))
        self.keep = os.environ.get("CHAOS_KEEP_STATE") == "1"


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Observer:
    """Every task and usage event on the bus, through an extra EventBridge rule into a queue of our
    own (what an operator's archive would hold), drained by a thread while the run goes on."""

    TYPES = ("TaskCompleted", "TaskFailed", "UsageRecorded")

    def __init__(self, env: dict[str, str]):
        import boto3

        kw = {
            "endpoint_url": env["AWS_ENDPOINT_URL"],
            "region_name": env["AWS_REGION"],
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        self.sqs = boto3.client("sqs", **kw)
        events = boto3.client("events", **kw)
        from ig3.topology import BUS_ENV

        self.url = self.sqs.create_queue(QueueName="chaos-observer")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        events.put_rule(
            Name="chaos-observer",
            EventBusName=env[BUS_ENV],
            State="ENABLED",
            EventPattern=json.dumps({"source": ["ig3"], "detail-type": list(self.TYPES)}),
        )
        events.put_targets(
            Rule="chaos-observer", EventBusName=env[BUS_ENV], Targets=[{"Id": "chaos", "Arn": arn}]
        )
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain_loop, name="chaos-observer", daemon=True)
        self._thread.start()

    def _drain_once(self) -> int:
        got = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        msgs = got.get("Messages", [])
        for m in msgs:
            doc = json.loads(m["Body"])
            self.events.append((doc["detail-type"], doc["detail"]))
        if msgs:
            self.sqs.delete_message_batch(
                QueueUrl=self.url,
                Entries=[{"Id": str(k), "ReceiptHandle": m["ReceiptHandle"]} for k, m in enumerate(msgs)],
            )
        return len(msgs)

    def _drain_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._drain_once()
            except Exception as exc:  # noqa: BLE001 — moto busy; try again
                log(f"observer: {type(exc).__name__}")
                time.sleep(1)

    def finish(self) -> list[tuple[str, dict[str, Any]]]:
        self._stop.set()
        self._thread.join(timeout=30)
        while self._drain_once():
            pass
        return self.events


def prepare_models(models_dir: Path) -> Path:
    """A tiny chat model and a tiny embedding model (mean pooling): every device serves both."""
    from ig3_edge.tinymodel import write_tiny_gguf

    models_dir.mkdir(parents=True, exist_ok=True)
    if not (models_dir / "tiny-llama.gguf").exists():
        write_tiny_gguf(models_dir / "tiny-llama.gguf", name="tiny-llama")
    if not (models_dir / "tiny-embed.gguf").exists():
        write_tiny_gguf(models_dir / "tiny-embed.gguf", name="tiny-embed", pooling="mean", seed=5)
    return models_dir


def api_get(base: str, key: str, path: str) -> Any:
    import urllib.request

    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def busy_things(base: str, key: str) -> set[str]:
    """Devices holding work now (in flight or reserved), as the public API shows them."""
    out: set[str] = set()
    cursor = ""
    try:
        for _ in range(100):
            doc = api_get(base, key, "/v1/devices" + (f"?cursor={cursor}" if cursor else ""))
            for d in doc.get("devices", []):
                live = d.get("live") or {}
                if live.get("in_flight") or live.get("reserved"):
                    out.add(live.get("thing") or d.get("device_id"))
            cursor = doc.get("next_cursor") or ""
            if not cursor:
                break
    except Exception as exc:  # noqa: BLE001 — the API may be degraded mid-chaos: any device will do then
        log(f"busy devices unknown ({type(exc).__name__}): choosing among all")
    return out


class Chaos:
    """The fault schedule, driven from the main thread (agents respawned here die with their
    spawning thread: ``ig3.local.procs.die_with_parent``)."""

    def __init__(
        self, s: Settings, cloud: Any, redis: RedisServer, broker: MosquittoBroker, rng: random.Random
    ):
        self.s, self.cloud, self.redis, self.broker, self.rng = s, cloud, redis, broker, rng
        n = s.devices
        self.kills = max(1, round(s.kill_fraction * n)) if s.kill_fraction > 0 else 0
        self.kill_at = [0.10 + 0.70 * (k + 0.5) / self.kills for k in range(self.kills)]
        self.killed: set[int] = set()
        self.restart_due: list[tuple[float, int]] = []
        self.broker_at, self.redis_at = 0.30, 0.55
        self.redis_up_due: float | None = None
        self.timeline: list[str] = []

    def note(self, msg: str) -> None:
        self.timeline.append(f"{time.strftime('%H:%M:%S')} {msg}")
        log(msg)

    def tick(self, progress: float) -> None:
        now = time.time()
        while self.kill_at and progress >= self.kill_at[0]:
            self.kill_at.pop(0)
            self._kill_one()
        if self.broker_at is not None and progress >= self.broker_at:
            self.broker_at = None
            t0 = time.time()
            self.broker.stop()
            self.broker.start()
            self.note(
                f"broker restarted (down {time.time() - t0:.1f}s; sessions and in-flight messages lost)"
            )
        if self.redis_at is not None and progress >= self.redis_at:
            self.redis_at = None
            self.redis.stop()
            self.redis_up_due = now + self.s.redis_down_s
            self.note(f"Redis stopped for {self.s.redis_down_s:.0f}s")
        if self.redis_up_due is not None and now >= self.redis_up_due:
            self.redis_up_due = None
            self.redis.start()
            self.note("Redis started again")
        for due, index in sorted(self.restart_due):
            if now >= due:
                self.restart_due.remove((due, index))
                t0 = time.time()
                self.cloud.fleet.restart(index)
                self.note(
                    f"device {index} ({self.cloud.fleet.devices[index].thing}) restarted "
                    f"(ready in {time.time() - t0:.1f}s)"
                )

    def _kill_one(self) -> None:
        fleet = self.cloud.fleet
        candidates = [i for i in range(len(fleet.devices)) if i not in self.killed]
        busy = busy_things(self.cloud.base_url, self.cloud.dev_api_key)
        mid_task = [i for i in candidates if fleet.devices[i].thing in busy]
        index = self.rng.choice(mid_task or candidates)
        self.killed.add(index)
        fleet.kill(index, signal.SIGKILL)
        self.restart_due.append((time.time() + self.rng.uniform(2, 6), index))
        self.note(
            f"device {index} ({fleet.devices[index].thing}) killed with SIGKILL "
            f"({'mid-task' if mid_task else 'no device held work at that moment'})"
        )

    def finish(self) -> None:
        """Bring everything back (a short run may end before its last restart)."""
        if self.redis_up_due is not None:
            self.redis_up_due = time.time()
        for k, (_, i) in enumerate(list(self.restart_due)):
            self.restart_due[k] = (0.0, i)
        self.tick(-1.0)


def main() -> int:
    s = Settings()
    rng = random.Random(s.seed)
    started = time.time()
    root = Path(tempfile.mkdtemp(prefix="ig3-chaos-"))
    log(f"{s.tasks} requests, {s.devices} devices, concurrency {s.concurrency}; state in {root}")
    # The network's own logs (every function container, agent, server) go to a file, not the terminal.
    # (Function containers print their metrics on stdout: this run's own lines keep the terminal.)
    sys.stdout.flush()
    sys.stdout = os.fdopen(os.dup(1), "w", buffering=1)
    cloud_log = open(root / "cloud.log", "ab")  # noqa: SIM115 — for the whole run
    os.dup2(cloud_log.fileno(), 1)
    os.dup2(cloud_log.fileno(), 2)
    log(f"logs of the network: {root / 'cloud.log'}")
    for k in [k for k in os.environ if k.startswith(("AWS_", "IG3_TABLE", "IG3_QUEUE"))]:
        os.environ.pop(k)  # the local cloud makes its own
    os.environ.setdefault("IG3_LOCAL_GRANT", str(10**12))  # enough for every hold of the run
    redis, broker = RedisServer(root / "redis"), MosquittoBroker(root / "mosquitto")
    redis.start()
    broker.start()
    # Rounded up, and at least one of each mode (garbage, forged) where the fleet has two devices.
    cheat_n = min(s.devices, max(2, math.ceil(s.cheat_fraction * s.devices))) if s.cheat_fraction > 0 else 0
    cheat_idx = rng.sample(range(s.devices), cheat_n)
    cheaters = {i: ("garbage", "forged")[k % 2] for k, i in enumerate(cheat_idx)}
    from ig3.local.cloud import LocalCloud, LocalCloudConfig

    cfg = LocalCloudConfig(
        port=free_port(),
        devices=s.devices,
        redis_url=redis.url,
        mqtt_url=broker.url,
        tiny_models=True,
        models_dir=prepare_models(root / "models"),
        state_dir=root / "state",
        cheaters=cheaters,
    )
    cloud = LocalCloud(cfg)
    load: subprocess.Popen | None = None
    failed_start = False
    try:
        t0 = time.time()
        cloud.start(progress=lambda m: log(f"starting: {m}"))
        log(
            f"network up in {time.time() - t0:.0f}s at {cloud.base_url}; cheaters: "
            + ", ".join(f"{i}={m}" for i, m in sorted(cheaters.items()))
        )
        observer = Observer(cloud.env)
        chaos = Chaos(s, cloud, redis, broker, rng)
        out = root / "requests.jsonl"
        load = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chaos.load",
                "--url",
                cloud.base_url,
                "--key",
                cloud.dev_api_key,
                "--requests",
                str(s.tasks),
                "--concurrency",
                str(s.concurrency),
                "--out",
                str(out),
                "--run",
                f"{s.seed}-{int(started)}",
                "--seed",
                str(s.seed),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        progress = {"done": 0, "ok": 0}

        def read_progress() -> None:
            assert load is not None and load.stdout is not None
            for line in load.stdout:
                try:
                    progress.update(json.loads(line))
                except ValueError:
                    pass

        threading.Thread(target=read_progress, daemon=True).start()
        load_t0, last_print = time.time(), 0.0
        while load.poll() is None:
            if time.time() - started > s.time_limit_s:
                log("time limit reached during the load: stopping the clients")
                load.terminate()
                break
            chaos.tick(progress["done"] / s.tasks)
            if time.time() - last_print >= 15:
                last_print = time.time()
                rate = progress["done"] / max(1e-9, time.time() - load_t0)
                log(
                    f"progress {progress['done']}/{s.tasks} answered ({progress['ok']} ok), "
                    f"{rate:.2f} req/s, "
                    f"devices alive {cloud.fleet.alive()}/{s.devices}"
                )
            time.sleep(0.5)
        load.wait()
        load_s = time.time() - load_t0
        chaos.finish()
        log(
            f"load finished: {progress['done']} requests in {load_s:.0f}s "
            f"({progress['done'] / load_s:.2f} req/s)"
        )

        # ---------------------------------------------------------------- drain
        from ig3 import config
        from ig3.billing.dynamo import DynamoBillingStore
        from ig3.tasks.model import Task

        store = DynamoBillingStore.from_env()
        tasks_table = config.table_name("tasks")
        ddb = store.client

        def scan_tasks() -> dict[str, Task]:
            out_: dict[str, Task] = {}
            args: dict[str, Any] = {"TableName": tasks_table, "ConsistentRead": True}
            while True:
                resp = ddb.scan(**args)
                for item in resp.get("Items", []):
                    t = Task.model_validate(json.loads(item["doc"]["S"]))
                    out_[t.task_id] = t
                if "LastEvaluatedKey" not in resp:
                    return out_
                args["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

        drain_t0 = time.time()
        drain_deadline = min(drain_t0 + s.drain_s, started + s.time_limit_s + s.drain_s)
        while True:
            tasks = scan_tasks()
            open_ = sum(1 for t in tasks.values() if not t.terminal)
            holds = sum(1 for _ in store.iter_active_holds())
            if (open_ == 0 and holds == 0) or time.time() > drain_deadline:
                break
            log(f"draining: {open_} tasks not terminal, {holds} holds active")
            time.sleep(5)
        time.sleep(3)  # the last usage events' consumers
        tasks = scan_tasks()
        log(f"drained in {time.time() - drain_t0:.0f}s")

        # --------------------------------------------------------------- collect
        events = observer.finish()
        requests = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        entries = [
            {
                "entry_id": e.entry_id,
                "account": e.account,
                "amount": e.amount,
                "kind": e.kind,
                "reference": e.reference,
                "requested_amount": e.requested_amount,
            }
            for e in store.iter_entries()
        ]
        accounts = {
            a.account: {"balance": a.balance, "held": a.held, "available": a.available}
            for a in store.iter_accounts()
        }
        active_holds = sum(1 for _ in store.iter_active_holds())
        from ig3.billing.reconcile import reconcile

        report = reconcile(store)
        task_docs = {
            t.task_id: {
                "status": t.status.value,
                "route": t.route,
                "kind": t.kind,
                "model": t.model,
                "attempt": t.attempt,
                "error": t.error.code if t.error else None,
                "usage": t.usage.model_dump() if t.usage else {},
            }
            for t in tasks.values()
        }
        failed_holds = {}
        for tid, d in task_docs.items():
            if d["status"] == "FAILED":
                h = store.get_hold(tid)
                failed_holds[tid] = h.state if h else None
        from ig3.billing.wiring import billing_service

        svc = billing_service()

        def expected_cost(d: dict[str, Any]) -> int:
            u = d["usage"] or {}
            return svc.cost(
                d["model"],
                d["route"] or "edge",
                d["kind"],
                prompt_tokens=u.get("prompt_tokens") or 0,
                completion_tokens=u.get("completion_tokens") or 0,
                sagemaker_ms=round(u.get("duration_ms") or 0) if d["route"] == "cloud" else 0,
            )

        # LLM requests the gateway answered on the cloud route carry no task: their usage entry is
        # keyed by the request id the client got back (x-request-id).
        llm_cloud_ok = {
            a["request_id"]
            for r in requests
            for a in r["attempts"]
            if a.get("request_id") and a.get("route") == "cloud"
        }
        by_ref = {e["reference"]: e for e in entries if e["kind"] == "usage"}

        def billed_ok(ref: str) -> bool:
            d = task_docs.get(ref)
            if d is None:
                return ref in llm_cloud_ok
            return (ref in by_ref) == (d["status"] == "COMPLETED")

        import boto3

        sqs = boto3.client("sqs")
        from ig3.topology import TOPOLOGY, queue_env

        dlq_msgs: list[tuple[str, str]] = []
        for q in TOPOLOGY.queues:
            url = cloud.env.get(queue_env(q.name + "_dlq"))
            if not url:
                continue
            while True:
                got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600).get(
                    "Messages", []
                )
                if not got:
                    break
                dlq_msgs += [(f"{q.name}-dlq", m["Body"]) for m in got]
        live = {d.thing for d in cloud.fleet.devices if d.process and d.process.poll() is None}

        results = [
            checks.one_terminal_state(task_docs, events),
            checks.completed_once(task_docs, events),
            *checks.billing(task_docs, entries, failed_holds, expected_cost, llm_cloud_ok),
            checks.ledger(
                report.ok, [m.__dict__ for m in report.mismatches], active_holds, accounts, entries
            ),
        ]
        dlq_check, dlq_lines = checks.explain_dlq(dlq_msgs, task_docs, billed_ok, live)
        results += [dlq_check, checks.client_view(requests, task_docs)]
        if progress["done"] < s.tasks:
            results.append(
                checks.Check(
                    "the load finished within the time bound",
                    False,
                    f"{progress['done']}/{s.tasks} answered in {s.time_limit_s:.0f}s",
                )
            )

        # ---------------------------------------------------------------- report
        from collections import Counter

        # The task behind each request's final answer; any other completed task ran for a request
        # the client saw fail (a 504 it retried, say) and was billed all the same.
        answered_tasks = {
            r["task_ids"][-1]
            for r in requests
            if r["task_ids"] and (r["status"] == 200 or r.get("task_status") == "COMPLETED")
        }
        figures = {
            "requests": s.tasks,
            "devices": s.devices,
            "concurrency": s.concurrency,
            "answered": progress["done"],
            "load_s": round(load_s, 1),
            "req_per_s": round(progress["done"] / load_s, 2),
            "total_s": round(time.time() - started, 1),
            "requests_by_kind_and_final_status": dict(
                Counter(f"{r['kind']}:{r['status']}" for r in requests)
            ),
            "client_retries": sum(len(r["attempts"]) - 1 for r in requests),
            "tasks": len(task_docs),
            "tasks_by_status": dict(Counter(d["status"] for d in task_docs.values())),
            "tasks_by_route": dict(Counter(f"{d['status']}:{d['route']}" for d in task_docs.values())),
            "failed_by_error": dict(
                Counter(d["error"] for d in task_docs.values() if d["status"] == "FAILED")
            ),
            "attempts_histogram": dict(sorted(Counter(d["attempt"] for d in task_docs.values()).items())),
            "events_observed": dict(Counter(k for k, _ in events)),
            "usage_entries": sum(1 for e in entries if e["kind"] == "usage"),
            "charged_micro_credits": -sum(e["amount"] for e in entries if e["kind"] == "usage"),
            "dlq_messages": len(dlq_msgs),
            # A request the client saw fail (and retried) whose task still ran to completion, billed.
            "answers_lost_to_client_but_billed": sum(
                1 for t, d in task_docs.items() if d["status"] == "COMPLETED" and t not in answered_tasks
            ),
            "cheaters": {str(i): m for i, m in sorted(cheaters.items())},
            "devices_killed": sorted(chaos.killed),
            "timeline": chaos.timeline,
        }
        print("\n=== chaos run: figures ===")
        for k, v in figures.items():
            if k != "timeline":
                print(f"  {k}: {v}")
        print("  timeline:")
        for line in chaos.timeline:
            print(f"    {line}")
        if dlq_lines:
            print("  DLQ messages:")
            for line in dlq_lines[:50]:
                print(f"    {line}")
        print("\n=== chaos run: invariants ===")
        for c in results:
            print(f"  [{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
            for b in c.bad:
                print(f"         e.g. {b}")
        (root / "tasks.json").write_text(json.dumps(task_docs))
        (root / "events.jsonl").write_text("".join(json.dumps([k, d]) + "\n" for k, d in events))
        (root / "entries.json").write_text(json.dumps(entries))
        record = root / "chaos-result.json"
        record.write_text(json.dumps({"figures": figures, "checks": [c.__dict__ for c in results]}, indent=1))
        ok = all(c.ok for c in results)
        print(f"\n{'PASS' if ok else 'FAIL'} in {time.time() - started:.0f}s (record: {record})", flush=True)
        return 0 if ok else 1
    except BaseException:
        failed_start = True
        raise
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        cloud.stop()
        broker.stop()
        redis.stop()
        if not s.keep and not failed_start:
            shutil.rmtree(root / "redis", ignore_errors=True)
