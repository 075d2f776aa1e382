"""The topology's functions: the shared layers, one role per function, triggers, schedules, env.

- **Least privilege from the declaration**: each function gets its own role with exactly the
  table, queue, bus, IoT, secret and SageMaker actions its ``Function`` entry declares; nothing
  is granted by name pattern or account-wide except where an AWS API has no resource scope
  (each such statement is acknowledged for cdk-nag with its reason, in this file).
- **Environment = the local cloud's**: the same ``ig3.topology`` variable names, so handlers read
  their resources identically on a laptop and in AWS.
- **Zip or image**: ``package="zip"`` uses the locally bundled asset (``ig3_cdk.packaging``);
  ``package="image"`` a Docker image asset that is only *recorded* at synth — ``cdk deploy``
  builds and pushes it. ``Function.image`` names its Dockerfile (``IMAGES``):

  - ``lambda-web-adapter``: images behind Lambda Web Adapter: one that serves API routes (the llm
    function) as its own ASGI app in response_stream mode; one fed by a queue (the cloud worker) as
    ``ig3.lambda_events:app`` in buffered mode, which receives the raw event on ``POST /events`` and
    calls the topology handler named in ``IG3_EVENT_HANDLER``. (The Lambda Python 3.11 base image is
    Amazon Linux 2: LiteLLM's hf-xet has no wheel for it.)
  - ``audit``: the Lambda Python 3.11 base image with llama-cpp-python built from source (no manylinux
    wheel exists) and the edge agent's re-scoring modules; the plain handler, no adapter.
- Buckets a function only reads (``reads_buckets``: the audit function's models bucket) grant
  ``s3:GetObject`` (which also authorizes HEAD) under the declared prefix, and ``s3:ListBucket`` on that
  bucket so a missing key answers 404 rather than 403.
- Functions with ``uses_redis`` run in the VPC's isolated subnets with the cache-clients
  security group; the others stay out of the VPC (no ENI cold-start cost, no endpoint needed).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from dataclasses import dataclass

from aws_cdk import Acknowledgment, Aws, Duration, RemovalPolicy, Size, Stack, Validations
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as event_targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from constructs import Construct

from ig3.topology import (BUS_ENV, IOT_DEVICE_POLICY_ENV, IOT_THING_GROUP_ENV, REDIS_ENV, SAGEMAKER_ENDPOINT_ENV,
                          SAGEMAKER_MODELS_ENV, Function, Topology, bucket_env, queue_env, table_env)
from ig3_cdk.constructs.buckets import bucket_name, bucket_objects_arn
from ig3_cdk.packaging import (CORE_EXCLUDED, CORE_PACKAGE, REPO, Artifact, Packager, asset_code,
                               handler_package_dir, lambda_handler)
from ig3_cdk.settings import StageSettings

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
DOCKERFILE = DOCKER_DIR / "lambda-web-adapter.Dockerfile"
EDGE_PACKAGE = REPO / "edge" / "greengrass" / "ig3_edge"


@dataclass(frozen=True)
class ImageRecipe:
    """What one kind of image's build context holds (``Function.image`` picks it)."""

    groups: tuple[str, ...]  # pyproject groups on top of core and the function's extras
    requirements: tuple[str, ...] = ()  # further distributions (and their closure), pinned from the lock
    edge_files: tuple[str, ...] = ()  # ig3_edge modules the image carries
    build_files: tuple[str, ...] = ()  # more files from infra/cdk/docker (build-only locks)
    web_adapter: bool = True


IMAGES = {
    "lambda-web-adapter": ImageRecipe(groups=("llm",)),
    # The audit function: ig3_edge.scoring.Rescorer over llama.cpp, the GGUF header reader, nothing else of
    # the agent (no MQTT, no Greengrass SDK, no eth-account).
    "audit": ImageRecipe(groups=(), requirements=("llama-cpp-python", "gguf"),
                         edge_files=("__init__.py", "scoring.py", "models.py", "backends/__init__.py",
                                     "backends/base.py", "backends/llama_cpp.py"),
                         build_files=("audit-build.lock",), web_adapter=False),
}
# Event-triggered image functions: the topology handler served to Lambda Web Adapter's pass-through.
EVENTS_ASGI_APP = "ig3.lambda_events:app"
IMAGE_BUILD = REPO / "infra" / "cdk" / "build" / "images"
LWA_PORT = "8080"
DYNAMODB_DATA_ACTIONS = ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:Scan",
                         "dynamodb:ConditionCheckItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                         "dynamodb:DeleteItem", "dynamodb:BatchWriteItem", "dynamodb:DescribeTable")
# The cloud publishes only under the versioned namespace (device tasks, task streams).
IOT_PUBLISH_TOPICS = ("ig3/v1/*",)


def retention(days: int) -> logs.RetentionDays:
    return {7: logs.RetentionDays.ONE_WEEK, 14: logs.RetentionDays.TWO_WEEKS, 30: logs.RetentionDays.ONE_MONTH,
            90: logs.RetentionDays.THREE_MONTHS, 365: logs.RetentionDays.ONE_YEAR}[days]


class Functions(Construct):
    def __init__(self, scope: Construct, id: str, *, topology: Topology, settings: StageSettings, stateful,
                 packager: Packager, public_host: str, iot_thing_group: str | None = None,
                 iot_device_policy: str | None = None, sagemaker_endpoint: str | None = None):
        super().__init__(scope, id)
        self.settings, self.stateful, self.packager = settings, stateful, packager
        self.architecture = lambda_.Architecture.ARM_64 if settings.architecture == "arm64" else lambda_.Architecture.X86_64
        self.layers: dict[str, lambda_.LayerVersion] = {}
        self.functions: dict[str, lambda_.Function] = {}
        self.function_layers: dict[str, tuple[str, ...]] = {}
        self.roles: dict[str, iam.Role] = {}
        self.assets: dict[str, Artifact] = {}  # artifact name -> its bundle (layers and zip functions)
        self.images: dict[str, dict] = {}
        self.schedules: dict[str, list[events.Rule]] = {}
        self.iot_thing_group, self.iot_device_policy = iot_thing_group, iot_device_policy
        self.sagemaker_endpoint = sagemaker_endpoint
        self.public_host = public_host
        # Image functions behind API routes are web apps (Lambda Web Adapter); the others plain handlers.
        self.web_functions = frozenset(r.function for r in topology.routes)
        for fn in topology.functions:
            for layer in fn.layers:
                if layer not in self.layers and fn.package == "zip":
                    self.layers[layer] = self._layer(layer)
        for fn in topology.functions:
            self.functions[fn.name] = self._function(fn)

    # ------------------------------------------------------------------ layers
    def _layer(self, name: str) -> lambda_.LayerVersion:
        art = self.packager.layer(name)
        anchor = CORE_PACKAGE if name == "core" else REPO / "requirements"
        layer = lambda_.LayerVersion(
            self, f"Layer-{name}", code=asset_code(art, anchor),
            compatible_runtimes=[lambda_.Runtime.PYTHON_3_11], compatible_architectures=[self.architecture],
            description=f"ig3 {name} layer" + (" (ig3 library + core dependencies)" if name == "core" else ""),
            removal_policy=RemovalPolicy.RETAIN if self.settings.retain_data else RemovalPolicy.DESTROY)
        self.assets[art.name] = art
        return layer

    # ------------------------------------------------------------------ functions
    def _function(self, fn: Function) -> lambda_.Function:
        stack = Stack.of(self)
        role = iam.Role(self, f"{fn.name}-role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description=f"ig3 {fn.name} function: only what the topology declares")
        self.roles[fn.name] = role
        log_group = logs.LogGroup(self, f"{fn.name}-logs", retention=retention(self.settings.log_retention_days),
                                  removal_policy=RemovalPolicy.RETAIN if self.settings.retain_data
                                  else RemovalPolicy.DESTROY)
        log_group.grant_write(role)
        env = self._environment(fn)
        common = dict(
            role=role, memory_size=fn.memory_mb, timeout=Duration.seconds(fn.timeout_s),
            architecture=self.architecture, environment=env, log_group=log_group,
            logging_format=lambda_.LoggingFormat.JSON, system_log_level_v2=lambda_.SystemLogLevel.WARN,
            tracing=lambda_.Tracing.ACTIVE, description=f"ig3 {fn.name} ({fn.handler})",
        )
        if fn.ephemeral_mb != 512:
            common["ephemeral_storage_size"] = Size.mebibytes(fn.ephemeral_mb)
        if fn.uses_redis:
            network = self.stateful.network
            common.update(vpc=network.vpc, vpc_subnets=network.egress_subnets if fn.internet else network.subnets,
                          security_groups=[network.clients_sg])
        if fn.package == "image":
            code = self._image_code(fn)
            function = lambda_.DockerImageFunction(self, fn.name, code=code, **common)
        else:
            art = self.packager.function(fn.name, fn.handler, fn.code_dir, fn.layers, fn.extras)
            self.function_layers[fn.name] = fn.layers
            self.assets[art.name] = art
            function = lambda_.Function(
                self, fn.name, runtime=lambda_.Runtime.PYTHON_3_11, handler=lambda_handler(fn.handler),
                code=asset_code(art, REPO / fn.code_dir), layers=[self.layers[n] for n in fn.layers], **common)
            Validations.of(function).acknowledge(Acknowledgment(
                id="AwsSolutions-L1",
                reason="Python 3.11 is the project's pinned target (requirements/dev.lock is compiled for it and "
                       "the edge agent shares the wire module); moving runtimes is a lock + test change, not infra"))
        self._grant(fn, function, role, stack)
        for i, expression in enumerate(fn.schedules):
            rule = events.Rule(self, f"{fn.name}-schedule-{i}", schedule=events.Schedule.expression(expression),
                               description=f"ig3 {fn.name}: {expression}",
                               targets=[event_targets.LambdaFunction(function, retry_attempts=2,
                                                                     max_event_age=Duration.minutes(5))])
            self.schedules.setdefault(fn.name, []).append(rule)
        self._acknowledge_platform_grants(fn, role)
        return function

    def _environment(self, fn: Function) -> dict[str, str]:
        st = self.stateful
        env = {
            "IG3_STAGE": self.settings.stage,
            "IG3_PUBLIC_HOST": self.public_host,
            "POWERTOOLS_SERVICE_NAME": f"ig3-{fn.name}",
            "POWERTOOLS_METRICS_NAMESPACE": "ig3",
            "POWERTOOLS_LOG_LEVEL": "INFO",
            # litellm would otherwise fetch its price map over the network at import.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        for t in fn.tables:
            env[table_env(t)] = st.data.tables[t].table_name
        for q in dict.fromkeys(fn.queues + tuple(tr.queue for tr in fn.triggers)):
            env[queue_env(q)] = st.messaging.queues[q].queue_url
        for b in fn.buckets:
            env[bucket_env(b)] = bucket_name(self.settings.stage, b)
        for b, _prefix in fn.reads_buckets:
            spec = next(x for x in self.stateful.topology.buckets if x.name == b)
            env[spec.variable] = bucket_name(self.settings.stage, b)
        if fn.publishes_events:
            env[BUS_ENV] = st.events.bus.event_bus_name
        if fn.uses_redis:
            env[REDIS_ENV] = st.cache.url
        for s in fn.secrets:
            secret = next(x for x in self._topology_secrets() if x.name == s)
            env[secret.env] = st.secrets.secrets[s].secret_arn
        if (fn.invokes_sagemaker or fn.routes_to_sagemaker) and self.sagemaker_endpoint:
            env[SAGEMAKER_ENDPOINT_ENV] = self.sagemaker_endpoint
            # ig3.tasks.cloud: the routable model names the endpoint serves (no list, no fallback).
            env[SAGEMAKER_MODELS_ENV] = self.settings.sagemaker_served_models
        if fn.manages_iot_things:
            env[IOT_THING_GROUP_ENV] = self.iot_thing_group or ""
            env[IOT_DEVICE_POLICY_ENV] = self.iot_device_policy or ""
        if fn.package == "image" and not IMAGES[fn.image].web_adapter:
            pass  # the Lambda base image's runtime interface client calls the handler itself
        elif fn.package == "image" and fn.name in self.web_functions:
            env.update({"AWS_LWA_INVOKE_MODE": "response_stream", "AWS_LWA_PORT": LWA_PORT,
                        "AWS_LWA_READINESS_CHECK_PATH": "/", "PORT": LWA_PORT})
        elif fn.package == "image":
            from ig3.lambda_events import EVENTS_PATH, HANDLER_ENV

            env.update({"AWS_LWA_INVOKE_MODE": "buffered", "AWS_LWA_PORT": LWA_PORT,
                        "AWS_LWA_READINESS_CHECK_PATH": "/", "AWS_LWA_PASS_THROUGH_PATH": EVENTS_PATH,
                        "PORT": LWA_PORT, HANDLER_ENV: fn.handler})
        return env

    def _topology_secrets(self):
        return self.stateful.topology.secrets

    def _grant(self, fn: Function, function: lambda_.Function, role: iam.Role, stack: Stack) -> None:
        st = self.stateful
        for t in fn.tables:
            # The table and each of its declared indexes by name: no "index/*" wildcard.
            table = st.data.tables[t]
            spec = next(x for x in self.stateful.topology.tables if x.name == t)
            role.add_to_policy(iam.PolicyStatement(
                actions=list(DYNAMODB_DATA_ACTIONS),
                resources=[table.table_arn, *(f"{table.table_arn}/index/{index}" for index, _, _ in spec.gsis)]))
        for q in fn.queues:
            st.messaging.queues[q].grant_send_messages(role)
        for tr in fn.triggers:
            function.add_event_source(sources.SqsEventSource(
                st.messaging.queues[tr.queue], batch_size=tr.batch_size,
                max_batching_window=Duration.seconds(tr.max_batching_window_s) if tr.max_batching_window_s else None,
                report_batch_item_failures=tr.report_batch_item_failures))
        if fn.publishes_events:
            st.events.bus.grant_put_events_to(role)
        if fn.publishes_iot:
            role.add_to_policy(iam.PolicyStatement(
                actions=["iot:Publish"],
                resources=[stack.format_arn(service="iot", resource="topic", resource_name=t)
                           for t in IOT_PUBLISH_TOPICS]))
        for b in fn.buckets:
            # Objects: get/put/delete (the Faiss store's conditional writes included).
            role.add_to_policy(iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                resources=[bucket_objects_arn(self.settings.stage, b)]))
            # ListBucket only so a missing key answers 404 NoSuchKey (a missing index / upload), not 403.
            role.add_to_policy(iam.PolicyStatement(
                actions=["s3:ListBucket"], resources=[bucket_objects_arn(self.settings.stage, b)[:-2]]))
        for b, prefix in fn.reads_buckets:
            # Read only: objects under the prefix (GetObject authorizes HEAD too), and the listing, so that a
            # missing object answers 404 NoSuchKey (a model not published yet), not 403.
            arn = f"arn:{Aws.PARTITION}:s3:::{bucket_name(self.settings.stage, b)}"
            role.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=[f"{arn}/{prefix}*"]))
            role.add_to_policy(iam.PolicyStatement(actions=["s3:ListBucket"], resources=[arn]))
        for s in fn.secrets:
            st.secrets.secrets[s].grant_read(role)
        for s in fn.secrets_written:
            st.secrets.secrets[s].grant_write(role)
        if fn.invokes_sagemaker and self.sagemaker_endpoint:
            role.add_to_policy(iam.PolicyStatement(
                actions=["sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointWithResponseStream"],
                resources=[stack.format_arn(service="sagemaker", resource="endpoint",
                                            resource_name=self.sagemaker_endpoint.lower())]))
        if fn.manages_iot_things:
            thing = stack.format_arn(service="iot", resource="thing", resource_name="*")
            cert = stack.format_arn(service="iot", resource="cert", resource_name="*")
            group = stack.format_arn(service="iot", resource="thinggroup", resource_name=self.iot_thing_group or "*")
            policy = stack.format_arn(service="iot", resource="policy", resource_name=self.iot_device_policy or "*")
            role.add_to_policy(iam.PolicyStatement(
                actions=["iot:CreateThing", "iot:DescribeThing", "iot:UpdateThing", "iot:DeleteThing",
                         "iot:AttachThingPrincipal", "iot:DetachThingPrincipal", "iot:ListThingPrincipals"],
                resources=[thing, cert]))
            role.add_to_policy(iam.PolicyStatement(
                actions=["iot:AddThingToThingGroup", "iot:RemoveThingFromThingGroup"], resources=[group, thing]))
            role.add_to_policy(iam.PolicyStatement(
                actions=["iot:UpdateCertificate", "iot:DeleteCertificate", "iot:DescribeCertificate",
                         "iot:AttachPolicy", "iot:DetachPolicy"], resources=[cert, policy]))
            role.add_to_policy(iam.PolicyStatement(
                actions=["iot:CreateKeysAndCertificate", "iot:DescribeEndpoint"], resources=["*"]))

    def _acknowledge_platform_grants(self, fn: Function, role: iam.Role) -> None:
        """cdk-nag acknowledgments for statements AWS APIs cannot scope further (reasons inline)."""
        v = Validations.of(role)
        v.acknowledge(Acknowledgment(
            id="AwsSolutions-IAM5[Resource::*]",
            reason="X-Ray PutTraceSegments/PutTelemetryRecords and EC2 ENI actions (VPC functions) have no "
                   "resource-level permissions; CreateKeysAndCertificate/DescribeEndpoint neither"))
        if fn.uses_redis:
            v.acknowledge(Acknowledgment(
                id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                   "AWSLambdaVPCAccessExecutionRole]",
                reason="AWS-maintained minimal ENI permissions Lambda needs to attach to the VPC"))
        if fn.publishes_iot:
            v.acknowledge(Acknowledgment(
                id="AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:topic/ig3/v1/*]",
                reason="the cloud publishes to per-device and per-task topics (ids unknown at deploy time) and "
                       "only under the versioned ig3/v1 namespace"))
        for b in fn.buckets:
            v.acknowledge(Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::ig3-{self.settings.stage}-{b}-"
                   "<AWS::AccountId>-<AWS::Region>/*]",
                reason=f"the {b} bucket's object keys are per collection / per upload, made at run time"))
        for b, prefix in fn.reads_buckets:
            v.acknowledge(Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::ig3-{self.settings.stage}-{b}-"
                   f"<AWS::AccountId>-<AWS::Region>/{prefix}*]",
                reason=f"read-only: the {b} bucket's objects are named by content hash (sha256), known only "
                       "when a job pins one"))
        if fn.manages_iot_things:
            for res in ("thing/*", "cert/*"):
                v.acknowledge(Acknowledgment(
                    id=f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:{res}]",
                    reason="registration creates things and certificates whose names/ids are only known at run time"))

    # ------------------------------------------------------------------ image functions
    def _image_code(self, fn: Function) -> lambda_.DockerImageCode:
        """Prepare the image's build context (small, only what the image needs) and record the asset.

        ``DockerImageCode.from_image_asset`` only fingerprints the directory at synth; Docker runs
        when ``cdk deploy`` publishes the asset.
        """
        recipe = IMAGES[fn.image]
        ctx = IMAGE_BUILD / fn.name
        shutil.rmtree(ctx, ignore_errors=True)
        ctx.mkdir(parents=True)
        shutil.copy2(DOCKER_DIR / f"{fn.image}.Dockerfile", ctx / "Dockerfile")
        for name in recipe.build_files:
            shutil.copy2(DOCKER_DIR / name, ctx / name)
        groups = tuple(dict.fromkeys((*recipe.groups, *fn.extras)))
        (ctx / "requirements.txt").write_text(self.packager.image_requirements(groups, recipe.requirements))

        def ignore(directory: str, names: list[str]) -> list[str]:
            drop = [n for n in names if n == "__pycache__" or n.endswith(".pyc")]
            if Path(directory) == CORE_PACKAGE:
                drop += [n for n in names if n in CORE_EXCLUDED]
            return drop

        shutil.copytree(CORE_PACKAGE, ctx / "ig3", ignore=ignore)
        package_dir = handler_package_dir(fn.handler)
        shutil.copytree(REPO / fn.code_dir, ctx / package_dir, ignore=ignore)
        parent, dest = (REPO / fn.code_dir).parent, Path(package_dir).parent
        while str(dest) not in (".", ""):
            if (parent / "__init__.py").is_file():
                shutil.copy2(parent / "__init__.py", ctx / dest / "__init__.py")
            parent, dest = parent.parent, dest.parent
        for rel in recipe.edge_files:
            (ctx / "ig3_edge" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(EDGE_PACKAGE / rel, ctx / "ig3_edge" / rel)
        platform = ecr_assets.Platform.LINUX_ARM64 if self.settings.architecture == "arm64" \
            else ecr_assets.Platform.LINUX_AMD64
        if not recipe.web_adapter:
            self.images[fn.name] = {"context": ctx, "app": None, "image": fn.image}
            return lambda_.DockerImageCode.from_image_asset(
                str(ctx), platform=platform, cmd=[lambda_handler(fn.handler)])
        app = fn.handler if fn.name in self.web_functions else EVENTS_ASGI_APP
        self.images[fn.name] = {"context": ctx, "app": app, "image": fn.image}
        return lambda_.DockerImageCode.from_image_asset(
            str(ctx), platform=platform, build_args={"ASGI_APP": app, "PORT": LWA_PORT})
