"""The one declaration of the system's shape.

Functions, their handlers and triggers, queues (each with a DLQ), tables, the event bus and
its rules, IoT topic rules and API routes. The local cloud (``ig3.local``) builds its moto
resources, pollers and HTTP front from it; the CDK app (``infra/cdk``) builds CloudFormation
from it; a test proves the two agree. Pure data: no AWS imports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Table:
    name: str
    pk: str
    sk: str | None = None
    ttl_attribute: str | None = None
    gsis: tuple[tuple[str, str, str | None], ...] = ()  # (index name, pk, sk)


@dataclass(frozen=True)
class Queue:
    name: str
    visibility_timeout_s: int = 60
    max_receive_count: int = 5  # then the DLQ
    dlq: bool = True


@dataclass(frozen=True)
class Bucket:
    """An S3 bucket (private, encrypted, TLS only). Functions that list it in ``buckets`` may read and
    write its objects; they find its name in ``bucket_env(name)``."""

    name: str
    # (key prefix, days): objects under the prefix expire after that many days (abandoned uploads).
    expire_prefixes: tuple[tuple[str, int], ...] = ()
    description: str = ""
    versioned: bool = False  # keep every object version (artefacts an operator must be able to recover)
    env: str | None = None  # the variable carrying its name, if not bucket_env(name)

    @property
    def variable(self) -> str:
        return self.env or bucket_env(self.name)


@dataclass(frozen=True)
class SqsTrigger:
    queue: str
    batch_size: int = 10
    max_batching_window_s: int = 0
    # Always on: consumers report partial batch failures (batchItemFailures).
    report_batch_item_failures: bool = True


@dataclass(frozen=True)
class Function:
    name: str
    handler: str  # "module.path:callable" importable from the ig3-gateway distribution
    code_dir: str  # asset folder relative to the repo root
    triggers: tuple[SqsTrigger, ...] = ()
    tables: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()  # queues it sends to
    publishes_events: bool = False
    publishes_iot: bool = False
    uses_redis: bool = False
    layers: tuple[str, ...] = ("core",)
    package: Literal["zip", "image"] = "zip"
    memory_mb: int = 512
    timeout_s: int = 30
    # pyproject optional-dependency groups bundled into this function's own zip on top of its
    # layers (e.g. "identity" for web3/eth-account) — heavy deps never go into the shared layer.
    extras: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()  # Topology.secrets it reads (env: Secret.env = the secret's ARN)
    secrets_written: tuple[str, ...] = ()  # of those, the ones it may also write (first-use init, rotation)
    invokes_sagemaker: bool = False  # the cloud-fallback endpoint (env: SAGEMAKER_ENDPOINT_ENV)
    # Routes tasks to the cloud fallback without invoking it (the dispatcher): gets the endpoint's
    # name and served models (SAGEMAKER_ENDPOINT_ENV, SAGEMAKER_MODELS_ENV), no SageMaker permission.
    routes_to_sagemaker: bool = False
    manages_iot_things: bool = False  # provisions things/certificates into the device thing group
    # EventBridge schedule expressions that invoke it ("rate(1 minute)", "cron(0 2 ? * THU *)");
    # the local cloud runs them as timers.
    schedules: tuple[str, ...] = ()
    buckets: tuple[str, ...] = ()  # Topology.buckets whose objects it reads and writes (env: bucket_env)
    # (bucket, key prefix) it may only read: objects under the prefix (env: Bucket.variable).
    reads_buckets: tuple[tuple[str, str], ...] = ()
    ephemeral_mb: int = 512  # /tmp size (Lambda: 512..10240)
    # package="image": the Dockerfile infra/cdk/docker/<image>.Dockerfile builds it.
    image: str = "lambda-web-adapter"
    # Calls hosts outside AWS (chain RPC, model providers). In AWS a VPC function (uses_redis) then
    # gets private subnets with a NAT route; the others reach only AWS, through VPC endpoints.
    internet: bool = False


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str  # API Gateway style: /v1/tasks/{id}
    function: str
    auth: Literal["none", "user", "device", "any"] = "any"


@dataclass(frozen=True)
class EventRule:
    name: str
    detail_types: tuple[str, ...]
    target_queue: str
    source: str = "ig3"


@dataclass(frozen=True)
class IotRule:
    name: str
    topic_filter: str  # MQTT filter in the rule's FROM
    target_queue: str
    # SELECT *, topic(4) AS thing FROM '<topic_filter>' — the thing name rides with the payload
    thing_level: int = 4

    @property
    def sql(self) -> str:
        return f"SELECT *, topic({self.thing_level}) AS thing FROM '{self.topic_filter}'"


@dataclass(frozen=True)
class Secret:
    name: str
    env: str  # environment variable carrying the secret's id (ARN in AWS, name locally)
    description: str = ""


@dataclass(frozen=True)
class Topology:
    tables: tuple[Table, ...]
    queues: tuple[Queue, ...]
    functions: tuple[Function, ...]
    routes: tuple[ApiRoute, ...]
    event_rules: tuple[EventRule, ...]
    iot_rules: tuple[IotRule, ...]
    bus: str = "ig3"
    api_function_names: tuple[str, ...] = field(default=())
    secrets: tuple[Secret, ...] = ()
    # The function API Gateway runs as the REQUEST authorizer for every route whose auth is not "none".
    authorizer: str | None = None
    # The function IoT Core runs as the custom authorizer for clients' MQTT over WebSocket (token auth).
    iot_authorizer: str | None = None
    buckets: tuple[Bucket, ...] = ()

    def function(self, name: str) -> Function:
        for f in self.functions:
            if f.name == name:
                return f
        raise KeyError(name)

    def bucket(self, name: str) -> Bucket:
        for b in self.buckets:
            if b.name == name:
                return b
        raise KeyError(name)

    def queue(self, name: str) -> Queue:
        for q in self.queues:
            if q.name == name:
                return q
        raise KeyError(name)

    def validate(self) -> None:
        """Every reference resolves; names are unique. Raises ValueError otherwise."""
        tables = {t.name for t in self.tables}
        queues = {q.name for q in self.queues}
        functions = {f.name for f in self.functions}
        for kind, names in (("table", [t.name for t in self.tables]), ("queue", [q.name for q in self.queues]),
                            ("function", [f.name for f in self.functions])):
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate {kind} names")
        for f in self.functions:
            for t in f.tables:
                if t not in tables:
                    raise ValueError(f"{f.name}: unknown table {t}")
            for q in f.queues + tuple(tr.queue for tr in f.triggers):
                if q not in queues:
                    raise ValueError(f"{f.name}: unknown queue {q}")
        consumed = [tr.queue for f in self.functions for tr in f.triggers]
        if len(set(consumed)) != len(consumed):
            raise ValueError("a queue has more than one consumer function")
        for r in self.routes:
            if r.function not in functions:
                raise ValueError(f"route {r.method} {r.path}: unknown function {r.function}")
        for rule in self.event_rules + self.iot_rules:
            if rule.target_queue not in queues:
                raise ValueError(f"rule {rule.name}: unknown queue {rule.target_queue}")
        secrets = {s.name for s in self.secrets}
        for f in self.functions:
            for s in f.secrets:
                if s not in secrets:
                    raise ValueError(f"{f.name}: unknown secret {s}")
            for s in f.secrets_written:
                if s not in f.secrets:
                    raise ValueError(f"{f.name}: writes secret {s} it does not declare in secrets")
        buckets = {b.name for b in self.buckets}
        if len(buckets) != len(self.buckets):
            raise ValueError("duplicate bucket names")
        for f in self.functions:
            for b in f.buckets + tuple(name for name, _ in f.reads_buckets):
                if b not in buckets:
                    raise ValueError(f"{f.name}: unknown bucket {b}")
        if self.authorizer is not None and self.authorizer not in functions:
            raise ValueError(f"authorizer: unknown function {self.authorizer}")
        if self.iot_authorizer is not None and self.iot_authorizer not in functions:
            raise ValueError(f"iot_authorizer: unknown function {self.iot_authorizer}")
        seen = set()
        for r in self.routes:
            key = (r.method, r.path)
            if key in seen:
                raise ValueError(f"duplicate route {key}")
            seen.add(key)


# Environment variable names a function reads its resources from (same locally and in AWS).
def table_env(table: str) -> str:
    return f"IG3_TABLE_{table.upper()}"


def queue_env(queue: str) -> str:
    return f"IG3_QUEUE_{queue.upper()}_URL"


def bucket_env(bucket: str) -> str:
    return f"IG3_BUCKET_{bucket.upper()}"


BUS_ENV = "IG3_EVENT_BUS"
REDIS_ENV = "REDIS_URL"
SAGEMAKER_ENDPOINT_ENV = "IG3_SAGEMAKER_ENDPOINT"
# Comma-separated routable model names the endpoint serves (the cloud fallback takes only those).
SAGEMAKER_MODELS_ENV = "IG3_SAGEMAKER_MODELS"
IOT_THING_GROUP_ENV = "IG3_IOT_THING_GROUP"
IOT_DEVICE_POLICY_ENV = "IG3_IOT_DEVICE_POLICY"


def physical_name(stage: str, name: str) -> str:
    return f"ig3-{stage}-{name}"


TOPOLOGY = Topology(
    tables=(
        Table("tasks", pk="task_id", ttl_attribute="expires_at"),
        Table("devices", pk="device_id", gsis=(("by_did", "did", None), ("by_owner", "owner", None))),
        Table("idempotency", pk="id", ttl_attribute="expiration"),
        # Identity (ig3.identity.apikeys): API keys by id (the id is part of the key), listed by owner.
        Table("api_keys", pk="key_id", gsis=(("by_owner", "owner", None),)),
        # Billing (ig3.billing.dynamo): balances = ledger sums; holds reserve before work starts.
        Table("accounts", pk="account"),
        Table("ledger", pk="entry_id",
              gsis=(("by_account", "account", "ts_key"), ("by_device", "device", "ts_key"))),
        Table("holds", pk="request_id", ttl_attribute="expires_at",
              gsis=(("by_expiry", "active_shard", "expires_key"),)),
        Table("deposit_cursors", pk="cursor"),  # per chain+treasury: last scanned block and its hash
        Table("rewards", pk="device_id", sk="epoch"),  # node rewards per device per epoch
        Table("presence", pk="device_id", sk="ts_key"),  # DeviceOnline/Offline transitions -> uptime
        # Device registration (ig3.devices): single-use challenge nonces and per-device leases.
        Table("device_challenges", pk="id", ttl_attribute="ttl"),
        # The local cloud's DID registry (ig3.did.resolvers.LocalRegistryResolver); no TTL: an
        # expired document must read as expired, not as unknown.
        Table("did_registry", pk="did"),
        # RAG (ig3.rag.registry): collections by owner wallet + name (ownership is the key itself).
        Table("rag_collections", pk="owner", sk="name"),
        # RAG asynchronous ingestion jobs (ig3.rag.jobs): status + checkpoint of large uploads.
        Table("rag_jobs", pk="job_id", ttl_attribute="expires_at"),
        # Verifiable work (ig3.audit.outcomes): audit verdicts and integrity faults per device, kept for
        # the epoch rewards (only audited-clean work counts); written once per audit / fault.
        Table("audit_outcomes", pk="device_id", sk="entry", ttl_attribute="expires_at"),
    ),
    queues=(
        Queue("tasks", visibility_timeout_s=60),  # PENDING tasks to place
        Queue("timeouts", visibility_timeout_s=60),  # one delayed message per assignment
        # Cloud-routed assignments, dispatcher -> cloud worker; visibility 6x the worker's timeout (AWS rule).
        Queue("cloud", visibility_timeout_s=720, max_receive_count=3),
        Queue("results", visibility_timeout_s=60),  # IoT rule: device results
        Queue("telemetry", visibility_timeout_s=60),  # IoT rule: heartbeats, batched
        Queue("billing", visibility_timeout_s=60),  # EventBridge rule: UsageRecorded events
        Queue("presence", visibility_timeout_s=60),  # EventBridge rule: DeviceOnline/DeviceOffline
        Queue("network", visibility_timeout_s=60),  # EventBridge rule: task/device events -> network summary
        # Telegram bot questions (ig3.telegram): one streamed answer each; longer than the worker's timeout.
        Queue("telegram", visibility_timeout_s=360, max_receive_count=3),
        # RAG ingestion jobs (ig3.rag.jobs): one message per large upload; longer than the worker's timeout.
        Queue("rag_ingest", visibility_timeout_s=960, max_receive_count=3),
        # Verifiable work (ig3.audit): one job per sampled/suspect completed task, re-scored by the audit
        # function; 6x its timeout (AWS's advice for SQS event sources). Unauditable jobs end in the DLQ.
        Queue("audit", visibility_timeout_s=1800, max_receive_count=5),
        Queue("audit_outcomes", visibility_timeout_s=60),  # EventBridge rule: AuditCompleted/IntegrityFault
    ),
    functions=(
        Function("api", "ig3_functions.api.handler:handler", "functions/api",
                 tables=("api_keys", "tasks", "devices", "idempotency", "accounts", "ledger", "holds", "rewards",
                         "device_challenges", "did_registry"),
                 queues=("tasks",), publishes_events=True,
                 uses_redis=True, manages_iot_things=True,
                 # evm: SIWE/DID secp256k1 recovery, EIP-1271 and the peaq precompile over JSON-RPC (ig3.evm);
                 # did: DID documents and ed25519/sr25519 keys; tokens: ES256 JWTs. No web3/eth-account.
                 secrets=("jwt_signing_keys",), extras=("evm", "did", "tokens"),
                 secrets_written=("jwt_signing_keys",),  # the issuer fills the placeholder key set on first use
                 internet=True),  # peaq DID resolution over JSON-RPC; IoT control plane (registration)
        Function("dispatch", "ig3_functions.dispatch.handler:handler", "functions/dispatch",
                 triggers=(SqsTrigger("tasks", batch_size=10),), tables=("tasks", "devices"),
                 queues=("timeouts", "tasks", "cloud"), publishes_events=True, publishes_iot=True,
                 uses_redis=True, routes_to_sagemaker=True),
        # The cloud fallback's worker (ig3.tasks.cloud): runs the cloud-routed assignments the dispatcher
        # hands off, one per invocation (a SageMaker call may take 60 s; an edge batch never waits on it).
        # LiteLLM (~225 MB) does not fit a zip: a container image (Lambda Web Adapter passes each event
        # to this handler through ig3.lambda_events).
        Function("cloud", "ig3_functions.cloud.handler:handler", "functions/cloud",
                 triggers=(SqsTrigger("cloud", batch_size=1),), tables=("tasks", "devices"),
                 queues=("tasks",),
                 publishes_events=True, publishes_iot=True, uses_redis=True, extras=("llm",), package="image",
                 invokes_sagemaker=True, memory_mb=1024, timeout_s=120),
        Function("results", "ig3_functions.results.handler:handler", "functions/results",
                 triggers=(SqsTrigger("results", batch_size=10),), tables=("tasks", "devices"),
                 queues=("tasks", "audit"),  # audit: completed edge work sampled for audit (ig3.audit)
                 publishes_events=True, uses_redis=True,
                 extras=("evm",)),  # result signatures: EIP-191 recovery (ig3.evm.keys: coincurve + keccak)
        Function("telemetry", "ig3_functions.telemetry.handler:handler", "functions/telemetry",
                 triggers=(SqsTrigger("telemetry", batch_size=100, max_batching_window_s=1),),
                 tables=("devices",), publishes_events=True, uses_redis=True,
                 schedules=("rate(1 minute)",)),  # offline detection when no heartbeat arrives at all
        Function("timeouts", "ig3_functions.timeouts.handler:handler", "functions/timeouts",
                 triggers=(SqsTrigger("timeouts", batch_size=10),), tables=("tasks",),
                 queues=("tasks", "timeouts"), publishes_events=True, uses_redis=True),
        Function("billing", "ig3_functions.billing.handler:handler", "functions/billing",
                 triggers=(SqsTrigger("billing", batch_size=25, max_batching_window_s=1),),
                 tables=("accounts", "ledger", "holds")),
        Function("billing_sweep", "ig3_functions.billing.sweep:handler", "functions/billing",
                 tables=("accounts", "ledger", "holds"), schedules=("rate(1 minute)",)),
        Function("deposits", "ig3_functions.deposits.handler:handler", "functions/deposits",
                 tables=("accounts", "ledger", "holds", "deposit_cursors"), schedules=("rate(1 minute)",),
                 extras=("evm",), timeout_s=120),  # blocks/receipts/logs over JSON-RPC (ig3.evm.rpc), EIP-55
        Function("presence", "ig3_functions.billing.presence:handler", "functions/billing",
                 triggers=(SqsTrigger("presence", batch_size=100, max_batching_window_s=1),),
                 tables=("presence",)),
        Function("rewards", "ig3_functions.billing.rewards:handler", "functions/billing",
                 tables=("devices", "accounts", "ledger", "holds", "rewards", "presence", "audit_outcomes"),
                 schedules=("cron(15 2 ? * THU *)",), timeout_s=900, memory_mb=1024),
        # RAG collections (ig3.rag): its own function for its numpy (the "rag" group: no faiss, no
        # qdrant-client/grpcio, which stay in "rag-local": infra/cdk/README.md, package sizes).
        # Embeddings are AI-gateway tasks (TaskService: tasks/devices, queues, IoT, holds);
        # Qdrant over REST via IG3_QDRANT_URL/IG3_QDRANT_API_KEY, Faiss indexes in S3 via IG3_RAG_BUCKET.
        Function("rag", "ig3_functions.rag.handler:handler", "functions/rag",
                 tables=("rag_collections", "rag_jobs", "tasks", "devices", "accounts", "ledger", "holds"),
                 queues=("tasks", "timeouts", "rag_ingest"), publishes_events=True, publishes_iot=True,
                 uses_redis=True, extras=("rag",), buckets=("rag",), memory_mb=1024, timeout_s=29),
        # Large uploads (ig3.rag.jobs): the rag function stores the documents in the rag bucket and
        # queues a job; this worker chunks, embeds and upserts them in checkpointed batches.
        Function("rag_ingest", "ig3_functions.rag.ingest:handler", "functions/rag",
                 triggers=(SqsTrigger("rag_ingest", batch_size=1),),
                 tables=("rag_collections", "rag_jobs", "tasks", "devices", "accounts", "ledger", "holds"),
                 queues=("tasks", "timeouts"), publishes_events=True, publishes_iot=True, uses_redis=True,
                 extras=("rag",), buckets=("rag",), memory_mb=2048, timeout_s=900),
        # RAG storage metering (ig3.rag.metering): closes every collection's storage interval hourly, so
        # vectors that sit unchanged are billed too (changes close theirs as they happen).
        Function("rag_meter", "ig3_functions.rag.meter:handler", "functions/rag",
                 tables=("rag_collections",), publishes_events=True, schedules=("rate(1 hour)",),
                 timeout_s=300),
        # OpenAI-compatible LLM API (ig3.llm): an ASGI app in a container image run by Lambda Web
        # Adapter in response_stream mode (the managed runtime cannot stream). Edge requests go through
        # the TaskService (tasks/devices tables, tasks/timeouts queues, IoT publish); cloud through
        # OpenAI-compatible upstreams or LiteLLM (SageMaker, Bedrock, ...). See functions/llm/README.md.
        Function("llm", "ig3_functions.llm.app:app", "functions/llm",
                 # accounts/ledger/holds: cloud requests reserve before the upstream call (ig3.llm.spend),
                 # edge requests through the TaskService's hold (ig3.tasks.billing)
                 tables=("api_keys", "tasks", "devices", "rag_collections", "accounts", "ledger", "holds"),
                 queues=("tasks", "timeouts"),
                 publishes_events=True, publishes_iot=True, uses_redis=True, secrets=("jwt_signing_keys",),
                 extras=("llm", "identity", "rag"),  # rag: the chat "rag" extension (ig3.rag.chat)
                 buckets=("rag",),  # Faiss collections' indexes (read by the chat "rag" extension)
                 package="image", invokes_sagemaker=True, memory_mb=1024, timeout_s=900,
                 internet=True),  # OpenAI-compatible upstreams / LiteLLM providers outside AWS
        # API Gateway REQUEST authorizer (ig3.identity): JWT / API key -> principal + route policy.
        Function("authorizer", "ig3_functions.authorizer.handler:handler", "functions/authorizer",
                 tables=("api_keys",), secrets=("jwt_signing_keys",), uses_redis=True, timeout_s=10,
                 extras=("tokens",)),  # cryptography for ES256 verification; web3 stays out
        # Pub/sub to users and dashboards (ig3.pubsub): network events -> Redis aggregates -> at most one
        # summary a second on IoT ig3/v1/network/summary; the schedule is a keep-alive for a quiet network.
        Function("pubsub", "ig3_functions.pubsub.handler:handler", "functions/pubsub",
                 triggers=(SqsTrigger("network", batch_size=100, max_batching_window_s=1),),
                 queues=("network",),  # its own delayed "tick" (publish the last change of a burst)
                 uses_redis=True, publishes_iot=True, schedules=("rate(1 minute)",)),
        # IoT Core custom authorizer for clients' MQTT over WebSocket: same JWT/API key as the HTTP API,
        # a policy allowing ig3/v1/network/* and the caller's own task streams (ig3.pubsub.authz).
        Function("pubsub_authorizer", "ig3_functions.pubsub.authorizer:handler", "functions/pubsub",
                 tables=("api_keys", "tasks"), secrets=("jwt_signing_keys",), uses_redis=True, timeout_s=10,
                 extras=("tokens",)),
        # Telegram bot (ig3.telegram): the webhook answers at once and queues questions; the worker
        # streams each answer from the LLM gateway (as the linked wallet) and edits it into the chat.
        Function("telegram", "ig3_functions.telegram.handler:handler", "functions/telegram",
                 queues=("telegram",), uses_redis=True, secrets=("telegram_bot", "jwt_signing_keys"),
                 secrets_written=("telegram_bot",),  # local first-use bootstrap from env (ig3.telegram.settings)
                 extras=("telegram", "tokens"), timeout_s=10, internet=True),  # Bot API, the gateway's URL
        Function("telegram_worker", "ig3_functions.telegram.worker:handler", "functions/telegram",
                 triggers=(SqsTrigger("telegram", batch_size=1),), uses_redis=True,
                 secrets=("telegram_bot", "jwt_signing_keys"), secrets_written=("telegram_bot",),
                 extras=("telegram", "tokens"), timeout_s=300, internet=True),
        # Verifiable work (ig3.audit): audit jobs re-scored by the reference llama.cpp copy of the pinned
        # model file; one job per invocation (a CPU-bound forward pass). Verdicts fold into reputations in
        # Redis and quarantine devices (DeviceQuarantined events). A container image (llama-cpp-python
        # has no manylinux wheel: built from source in infra/cdk/docker/audit.Dockerfile); the model
        # files come from the models bucket into /tmp on first use (ig3.audit.models), hence the
        # ephemeral storage; 3,008 MB holds a loaded model of a few GB; the timeout covers a cold
        # download + load + forward pass.
        Function("audit", "ig3_functions.audit.handler:handler", "functions/audit",
                 triggers=(SqsTrigger("audit", batch_size=1),), publishes_events=True, uses_redis=True,
                 reads_buckets=(("models", "models/"),), package="image", image="audit",
                 memory_mb=3008, ephemeral_mb=10240, timeout_s=300),
        # Audit outcomes -> the audit_outcomes table the epoch rewards read (idempotent per audit / fault).
        Function("audit_outcomes", "ig3_functions.billing.audit_outcomes:handler", "functions/billing",
                 triggers=(SqsTrigger("audit_outcomes", batch_size=25, max_batching_window_s=1),),
                 tables=("audit_outcomes",)),
    ),
    routes=(
        ApiRoute("GET", "/v1/auth/nonce", "api", auth="none"),
        ApiRoute("POST", "/v1/auth/login", "api", auth="none"),
        ApiRoute("POST", "/v1/auth/did/challenge", "api", auth="none"),
        ApiRoute("POST", "/v1/auth/did/login", "api", auth="none"),
        ApiRoute("POST", "/v1/keys", "api", auth="user"),
        ApiRoute("GET", "/v1/keys", "api", auth="user"),
        ApiRoute("DELETE", "/v1/keys/{id}", "api", auth="user"),
        ApiRoute("POST", "/v1/tasks", "api", auth="user"),
        ApiRoute("GET", "/v1/tasks/{id}", "api", auth="user"),
        ApiRoute("GET", "/v1/devices", "api", auth="any"),
        ApiRoute("GET", "/v1/devices/{id}", "api", auth="any"),
        ApiRoute("POST", "/v1/devices/challenge", "api", auth="none"),
        ApiRoute("POST", "/v1/devices/register", "api", auth="none"),
        ApiRoute("DELETE", "/v1/devices/{id}", "api", auth="any"),
        ApiRoute("GET", "/v1/billing/balance", "api", auth="user"),
        ApiRoute("GET", "/v1/billing/usage", "api", auth="user"),
        ApiRoute("GET", "/v1/rewards/{device}", "api", auth="any"),
        ApiRoute("GET", "/v1/catalogue", "api", auth="any"),
        ApiRoute("POST", "/v1/collections", "rag", auth="user"),
        ApiRoute("GET", "/v1/audit/quarantine", "api", auth="user"),  # operators (scope "operator")
        ApiRoute("GET", "/v1/collections", "rag", auth="user"),
        ApiRoute("GET", "/v1/collections/{name}", "rag", auth="user"),
        ApiRoute("DELETE", "/v1/collections/{name}", "rag", auth="user"),
        ApiRoute("POST", "/v1/collections/{name}/documents", "rag", auth="user"),
        ApiRoute("POST", "/v1/collections/{name}/documents/delete", "rag", auth="user"),
        ApiRoute("POST", "/v1/collections/{name}/query", "rag", auth="user"),
        ApiRoute("GET", "/v1/collections/{name}/jobs/{id}", "rag", auth="user"),
        ApiRoute("POST", "/v1/chat/completions", "llm", auth="user"),
        ApiRoute("POST", "/v1/completions", "llm", auth="user"),
        ApiRoute("POST", "/v1/embeddings", "llm", auth="user"),
        ApiRoute("GET", "/v1/models", "llm", auth="user"),
        ApiRoute("POST", "/v1/telegram/webhook", "telegram", auth="none"),  # the secret-token header is the auth
        ApiRoute("POST", "/v1/telegram/link", "telegram", auth="user"),
    ),
    event_rules=(
        EventRule("usage_to_billing", ("UsageRecorded",), "billing"),
        # RAG storage intervals (ig3.rag.metering) are billed by the billing function (ig3.billing.storage).
        EventRule("rag_storage_to_billing", ("RagStorageChanged",), "billing"),
        EventRule("presence_to_rewards", ("DeviceOnline", "DeviceOffline"), "presence"),
        EventRule("audits_to_rewards", ("AuditCompleted", "IntegrityFault"), "audit_outcomes"),
        EventRule("network_to_pubsub", ("TaskSubmitted", "TaskAssigned", "TaskCompleted", "TaskFailed",
                                         "TaskRequeued", "DeviceOnline", "DeviceOffline"), "network"),
    ),
    iot_rules=(
        IotRule("device_results", "ig3/v1/devices/+/results", "results"),
        IotRule("device_heartbeats", "ig3/v1/devices/+/heartbeat", "telemetry"),
    ),
    secrets=(
        Secret("jwt_signing_keys", env="IG3_JWT_SECRET_ID",
               description="ES256 JWT signing keys (kid rotation) for access tokens"),
        Secret("telegram_bot", env="IG3_TELEGRAM_SECRET_ID",
               description='Telegram bot: {"bot_token", "webhook_secret"}'),
    ),
    authorizer="authorizer",
    iot_authorizer="pubsub_authorizer",
    buckets=(
        # RAG (ig3.rag): Faiss indexes (rag/faiss/) and uploads waiting for ingestion (rag/uploads/).
        Bucket("rag", expire_prefixes=(("rag/uploads/", 14),),
               description="RAG: Faiss indexes and large uploads awaiting ingestion"),
        # Verifiable work (ig3.audit.s3models): reference GGUF files at models/<sha256>.gguf with their
        # metadata, published by operators (`ig3 models publish`), read by the audit function only.
        Bucket("models", versioned=True, env="IG3_AUDIT_MODELS_BUCKET",
               description="Audit reference models: GGUF files by sha256"),
    ),
)
