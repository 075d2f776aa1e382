"""Dispatch throughput through the dispatch function, in-process: tasks/s and per-dispatch latency.

What one dispatch is: the ``dispatch`` function's handler (``ig3_functions.dispatch.handler``) on
a real Lambda SQS batch event of up to 10 records pulled from the ``tasks`` queue, and per
record ``TaskService.dispatch``: read the task (DynamoDB), the scheduler's placement (candidate
fetch + decision + Lua reservation on real Redis), the conditional write ASSIGNED (DynamoDB),
the delayed timeout message (SQS), the publish to the device (an in-memory IotPublisher: no
MQTT), the TaskAssigned event (EventBridge). AWS is a moto server on loopback (its own process),
so the AWS calls are HTTP round trips to moto — they dominate; the scheduler is reported apart.

Devices are simulated by heartbeats only (``LiveState.apply_heartbeats``), with enough slots
that every task is placed. Tasks are submitted first (untimed: DynamoDB + SQS + TaskSubmitted),
then the queue is drained by invoking the handler batch by batch as the event-source mapping
would (receive, invoke, delete), on one thread.

Reported: tasks/s through the handler (tasks / handler time) and including the mapping's own
receive/delete calls; per-dispatch p50/p99/mean; the share inside the scheduler's ``place``.
Redis keys live under a unique prefix and are deleted afterwards (never a flush).

Events: ``batched`` (what the handler does: the batch's events in PutEvents calls of up to 10 at
its end) and ``immediate`` (one PutEvents per transition, as before #5's batching) run in the same
process against the same moto and fleet, so the two are comparable. With batching the PutEvents
time is outside ``dispatch`` (it is in the handler, at the batch's end): compare the handler's
tasks/s and the CPU per dispatch, not the per-dispatch latency.

Run: ``.venv/bin/python bench/bench_dispatch.py [--tasks 300] [--devices 1000] [--events both]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

TASKS = 300
DEVICES = 1_000
MODEL = "smollm2-135m-instruct"


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _heartbeats(n: int, now: float, seed: int = 7):
    from ig3.wire import DeviceLoad, Heartbeat, Location, ModelInfo

    rng = random.Random(seed)
    return [
        Heartbeat(
            thing=f"bench-d-{i:05d}",
            ts=now,
            region=("eu", "us", "ap")[i % 3],
            location=Location(lat=rng.uniform(-50, 60), lon=rng.uniform(-170, 170)),
            load=DeviceLoad(capacity=8),
            tokens_per_s=rng.uniform(5, 80),
            models=[ModelInfo(name=MODEL, ctx=2048, sha256="a" * 64, tokens_per_s=rng.uniform(5, 80))],
        )
        for i in range(n)
    ]


def _wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


class _ImmediateEvents:
    """The pre-batching behaviour: every transition's events in their own PutEvents call."""

    def __init__(self, inner):
        self.inner = inner

    def publish(self, events):
        self.inner.publish(events)

    def collecting(self):
        return contextlib.nullcontext()

    def owned_by(self, owner):
        return contextlib.nullcontext()

    def flush(self):
        return set()


def run(tasks: int = TASKS, devices: int = DEVICES, events: str = "batched") -> dict:
    """Figures for one events mode (``batched`` | ``immediate``), or both (``both``: a dict per mode)."""
    # Powertools prints its EMF metric blobs to stdout (as in Lambda): kept, but not on the terminal.
    with contextlib.redirect_stdout(io.StringIO()):
        modes = ("immediate", "batched") if events == "both" else (events,)
        figs = _run(tasks, devices, modes)
    return figs if events == "both" else figs[events]


def _run(tasks: int, devices: int, modes: tuple[str, ...]) -> dict:
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "ig3-bench")
    for k, v in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(k, v)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    import redis

    from ig3.aws import reset_clients
    from ig3.local.cloud import free_port
    from ig3.local.resources import provision
    from ig3.topology import TOPOLOGY

    port = free_port()
    # moto in its own process, like AWS is elsewhere: its CPU is not the dispatcher's (nor its GIL).
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_http(f"http://127.0.0.1:{port}/moto-api/")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    try:
        endpoint = f"http://127.0.0.1:{port}"
        env = provision(TOPOLOGY, endpoint_url=endpoint, stage="b" + uuid.uuid4().hex[:5])
        os.environ.update(env)
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "REDIS_URL": redis_url, "IG3_LIVE_PREFIX": prefix})
        os.environ.pop("IG3_SAGEMAKER_ENDPOINT", None)  # edge only: the cloud path is not what this measures
        reset_clients()
        from ig3.iot import MemoryIotPublisher
        from ig3.tasks import wiring

        svc = wiring.task_service()
        svc.iot = MemoryIotPublisher()
        live = wiring.live_state()
        deferred = svc.events
        live.apply_heartbeats(_heartbeats(devices, time.time()))
        figs = {}
        for mode in modes:
            svc.events = deferred if mode == "batched" else _ImmediateEvents(deferred.inner)
            svc.iot.sent.clear()
            figs[mode] = _phase(svc, live, env, tasks, devices)
            svc.events = deferred
    finally:
        r = redis.Redis.from_url(redis_url)
        keys = list(r.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i : i + 1000])
        moto.terminate()
        try:
            moto.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded box: do not lose the figures over a slow exit
            moto.kill()
            moto.wait()
    return figs


def _phase(svc, live, env, tasks: int, devices: int) -> dict:
    from ig3.local.lambda_runtime import LambdaContext
    from ig3.local.pollers import sqs_event
    from ig3.tasks.model import TaskSpec
    from ig3.topology import queue_env
    from ig3_functions.dispatch import handler as dispatch_fn

    dispatch_s: list[float] = []
    place_s: list[float] = []
    inner_dispatch, inner_place = svc.dispatch, svc.placer.place
    inner_place_many = getattr(svc.placer, "place_many", None)
    place_many_calls: list[int] = []

    def timed_dispatch(task_id, **kw):
        t0 = time.perf_counter()
        try:
            return inner_dispatch(task_id, **kw)
        finally:
            dispatch_s.append(time.perf_counter() - t0)

    def timed_place(task, *, hold_s):
        t0 = time.perf_counter()
        try:
            return inner_place(task, hold_s=hold_s)
        finally:
            place_s.append(time.perf_counter() - t0)

    def timed_place_many(items):
        # The handler places its batch together (TaskService.batch_placement): per task, its share.
        t0 = time.perf_counter()
        try:
            return inner_place_many(items)
        finally:
            place_s.extend([(time.perf_counter() - t0) / max(len(items), 1)] * len(items))
            place_many_calls.append(len(items))

    svc.dispatch, svc.placer.place = timed_dispatch, timed_place
    if inner_place_many is not None:
        svc.placer.place_many = timed_place_many
    put_calls: list[int] = []  # PutEvents calls of the dispatch phase (entries each)
    put_s: list[float] = []  # and the wall time of each (client-side: serialise, HTTP, parse)
    put_t0: list[float] = []

    def count_put(params, **_):
        put_calls.append(len(params.get("Entries", [])))
        put_t0.append(time.perf_counter())

    def timed_put(**_):
        if put_t0:
            put_s.append(time.perf_counter() - put_t0.pop())

    spec = TaskSpec.model_validate(
        {
            "kind": "chat",
            "model": MODEL,
            "stream": False,
            "input": {"messages": [{"role": "user", "content": "hello"}]},
            "constraints": {"near": [48.1, 11.6]},
        }
    )
    account = "0x" + "b" * 40
    if getattr(svc, "budget", None) is not None:  # submissions hold funds first (hold and settle)
        from ig3.billing.wiring import billing_service

        billing_service().credit(account, 10**15, reference=f"bench-dispatch-{uuid.uuid4().hex}")
    live.apply_heartbeats(_heartbeats(devices, time.time()))
    t0 = time.perf_counter()
    ids = [svc.submit(spec, account=account).task_id for _ in range(tasks)]
    submit_s = time.perf_counter() - t0
    # The fleet keeps heart-beating during the dispatch phase (every 10 s, TTL 30 s), as it would live.
    stop_beats = threading.Event()

    def beat_forever() -> None:
        while True:
            live.apply_heartbeats(_heartbeats(devices, time.time()))
            if stop_beats.wait(10.0):
                return

    beats = threading.Thread(target=beat_forever, name="heartbeats", daemon=True)
    beats.start()

    import boto3

    events_client = svc.events.inner.client if hasattr(svc.events, "inner") else None
    if events_client is not None:
        events_client.meta.events.register("provide-client-params.events.PutEvents", count_put)
        events_client.meta.events.register("after-call.events.PutEvents", timed_put)

    sqs = boto3.client("sqs")
    url = env[queue_env("tasks")]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    handler_s = 0.0
    failures = 0
    t_all = time.perf_counter()
    cpu0 = time.thread_time()  # this thread only: not the heartbeat thread
    t_last, cpu_last = t_all, cpu0
    empty = 0
    # Drain fully: a task that found no free device is re-enqueued with a delay (``waiting``).
    while empty < 4:
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                   AttributeNames=["All"]).get(
            "Messages", []
        )
        if not msgs:
            empty += 1  # a long poll can come back empty while messages remain
            continue
        empty = 0
        ctx = LambdaContext(
            function_name="dispatch",
            aws_request_id=str(uuid.uuid4()),
            invoked_function_arn="arn:aws:lambda:us-east-1:000000000000:function:dispatch",
            _deadline=time.time() + 30,
        )
        t0 = time.perf_counter()
        resp = dispatch_fn.handler(sqs_event(msgs, arn, "us-east-1"), ctx)
        handler_s += time.perf_counter() - t0
        failed = {f["itemIdentifier"] for f in resp.get("batchItemFailures", [])}
        failures += len(failed)
        done = [m for m in msgs if m["MessageId"] not in failed]
        if done:
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
            )
        t_last, cpu_last = time.perf_counter(), time.thread_time()
    # Up to the last batch: the final empty polls that prove the queue drained are not work.
    total_s = t_last - t_all
    cpu_s = cpu_last - cpu0
    stop_beats.set()
    beats.join()
    if events_client is not None:
        events_client.meta.events.unregister("provide-client-params.events.PutEvents", count_put)
        events_client.meta.events.unregister("after-call.events.PutEvents", timed_put)
    svc.dispatch, svc.placer.place = inner_dispatch, inner_place
    if inner_place_many is not None:
        svc.placer.place_many = inner_place_many
    assigned = sum(1 for i in ids if svc.store.get(i).status.value == "ASSIGNED")
    published = len(svc.iot.sent)
    if not dispatch_s:
        raise RuntimeError("no dispatch ran")
    ms = [s * 1000 for s in dispatch_s]
    place_ms = [s * 1000 for s in place_s]
    return {
        "tasks": tasks,
        "devices": devices,
        "assigned": assigned,
        "published": published,
        "dispatch_calls": len(dispatch_s),
        "batch_failures": failures,
        "submit_per_s": round(tasks / submit_s, 1),
        "dispatch_per_s_handler": round(len(dispatch_s) / handler_s, 1),
        "dispatch_per_s_with_mapping": round(len(dispatch_s) / total_s, 1),
        "dispatch_p50_ms": round(_pct(ms, 0.50), 2),
        "dispatch_p99_ms": round(_pct(ms, 0.99), 2),
        "dispatch_mean_ms": round(statistics.fmean(ms), 2),
        "place_p50_ms": round(_pct(place_ms, 0.50), 3),
        "place_p99_ms": round(_pct(place_ms, 0.99), 3),
        # Placement happens before the records' dispatches (the batch's) and inside them (single
        # placements): its share of the handler's time.
        "place_share": round(sum(place_ms) / 1000 / handler_s, 3),
        "batch_placements": len(place_many_calls),
        "tasks_placed_in_batches": sum(place_many_calls),
        # This process's CPU per dispatch (handler + boto3 clients + the mapping's calls): the part
        # that does not depend on how busy the machine or moto is.
        "cpu_ms_per_dispatch": round(cpu_s * 1000 / len(dispatch_s), 2),
        "put_events_calls": len(put_calls),
        "put_events_entries": sum(put_calls),
        "put_events_ms_per_dispatch": round(sum(put_s) * 1000 / len(dispatch_s), 2),
        "put_events_share_of_handler": round(sum(put_s) / handler_s, 3),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=TASKS)
    ap.add_argument("--devices", type=int, default=DEVICES)
    ap.add_argument("--events", choices=("batched", "immediate", "both"), default="both")
    args = ap.parse_args(argv)
    out = run(args.tasks, args.devices, args.events)
    figs = out if args.events == "both" else {args.events: out}
    for mode, fig in figs.items():
        print(
            f"dispatch function in-process, events {mode}: {fig['tasks']} tasks, {fig['devices']} "
            f"heartbeat-only devices (moto server + real Redis + real scheduler)"
        )
        rows = [
            (
                "assigned / published / dispatch calls",
                f"{fig['assigned']} / {fig['published']} / " f"{fig['dispatch_calls']}",
            ),
            ("batch item failures", fig["batch_failures"]),
            ("submit (untimed phase)", f"{fig['submit_per_s']} tasks/s"),
            ("dispatch, handler time", f"{fig['dispatch_per_s_handler']} tasks/s"),
            ("dispatch, incl. receive/delete", f"{fig['dispatch_per_s_with_mapping']} tasks/s"),
            (
                "per dispatch p50 / p99 / mean",
                f"{fig['dispatch_p50_ms']} / {fig['dispatch_p99_ms']} / " f"{fig['dispatch_mean_ms']} ms",
            ),
            ("scheduler place p50 / p99", f"{fig['place_p50_ms']} / {fig['place_p99_ms']} ms"),
            ("share of handler time in placement", f"{fig['place_share'] * 100:.1f} %"),
            ("tasks placed in batches", f"{fig['tasks_placed_in_batches']} in {fig['batch_placements']} calls"),
            ("dispatcher CPU per dispatch", f"{fig['cpu_ms_per_dispatch']} ms"),
            ("PutEvents calls / entries", f"{fig['put_events_calls']} / {fig['put_events_entries']}"),
            (
                "PutEvents time per dispatch (share of handler)",
                f"{fig['put_events_ms_per_dispatch']} ms ({fig['put_events_share_of_handler'] * 100:.1f} %)",
            ),
        ]
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"  {k:<{width}}  {v}")
    return out


if __name__ == "__main__":
    main()
