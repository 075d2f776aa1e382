"""Stage settings, read from CDK context (``-c ig3:stage=prod``), with per-stage defaults.

Everything an operator may want to vary between dev and prod — or per account — is a context
key here, never an edit to the stacks. Defaults are chosen so that ``dev`` is cheap at rest and
``prod`` is safe (deletion protection, retained data, longer log retention).

Context keys (all optional):

- ``ig3:stage``                dev | prod (default dev)
- ``ig3:arch``                 arm64 | x86_64 (default arm64: Graviton is ~20% cheaper per GB-s)
- ``ig3:bundle``               full | source (source skips pip: fast test synths, not deployable)
- ``ig3:public-host``          the API's public host name (SIWE domain); default: the execute-api host
- ``ig3:alarm-email``          subscribe this address to the alarm topic
- ``ig3:sagemaker``            on | off (the cloud-fallback endpoint: the main at-rest cost)
- ``ig3:sagemaker-image``      the endpoint's container image URI (default: an LMI/vLLM DLC image)
- ``ig3:sagemaker-model``      HF model id or s3:// prefix the container serves
- ``ig3:sagemaker-instance``   instance type (dev ml.g5.xlarge, prod ml.g5.12xlarge)
- ``ig3:sagemaker-tp``         tensor-parallel degree = GPUs the model is sharded over (dev 1, prod 4)
- ``ig3:sagemaker-count``      initial instance count
- ``ig3:sagemaker-served-models`` routable model names the endpoint serves (IG3_SAGEMAKER_MODELS)
- ``ig3:sagemaker-endpoint``   an existing endpoint's name to fall back to when this stack deploys none
                               (``ig3:sagemaker=off``); with neither, the cloud fallback is off
- ``ig3:waf-acl-arn``         associate this WAFv2 web ACL with the API stage
- ``ig3:greengrass-recipe``    path of the edge component recipe (default edge/greengrass/recipe.yaml)
"""
from __future__ import annotations

from dataclasses import dataclass

from constructs import Node

DEFAULT_LMI_IMAGE = "763104351884.dkr.ecr.${AWS::Region}.${AWS::URLSuffix}/djl-inference:0.33.0-lmi15.0.0-cu128"


@dataclass(frozen=True)
class StageSettings:
    stage: str
    architecture: str  # arm64 | x86_64
    bundle_mode: str  # full | source
    public_host: str | None
    alarm_email: str | None
    # data safety
    deletion_protection: bool
    retain_data: bool
    pitr: bool
    log_retention_days: int
    event_archive_days: int
    # API
    throttle_rate: int
    throttle_burst: int
    authorizer_cache_s: int
    # cache (ElastiCache Serverless limits bound its cost)
    cache_max_data_gb: int
    cache_max_ecpu_per_s: int
    cache_snapshot_days: int
    # SageMaker cloud fallback
    sagemaker: bool
    sagemaker_image: str
    sagemaker_model: str
    sagemaker_instance: str
    sagemaker_tp_degree: int
    sagemaker_count: int
    sagemaker_served_models: str
    greengrass_recipe: str
    sagemaker_endpoint: str | None = None
    waf_acl_arn: str | None = None
    azs: int = 2

    @property
    def machine(self) -> str:
        return "aarch64" if self.architecture == "arm64" else "x86_64"

    @property
    def is_prod(self) -> bool:
        return self.stage == "prod"


def _ctx(node: Node, key: str, default):
    value = node.try_get_context(key)
    return default if value is None else value


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "on", "yes")


def load(node: Node) -> StageSettings:
    stage = str(_ctx(node, "ig3:stage", "dev"))
    if stage not in ("dev", "prod"):
        raise ValueError(f"ig3:stage must be dev or prod, not {stage!r}")
    prod = stage == "prod"
    arch = str(_ctx(node, "ig3:arch", "arm64"))
    if arch not in ("arm64", "x86_64"):
        raise ValueError(f"ig3:arch must be arm64 or x86_64, not {arch!r}")
    tp = int(_ctx(node, "ig3:sagemaker-tp", 4 if prod else 1))
    if tp < 1:
        raise ValueError("ig3:sagemaker-tp must be >= 1")
    return StageSettings(
        stage=stage,
        architecture=arch,
        bundle_mode=str(_ctx(node, "ig3:bundle", "full")),
        public_host=_ctx(node, "ig3:public-host", None),
        alarm_email=_ctx(node, "ig3:alarm-email", None),
        deletion_protection=prod,
        retain_data=prod,
        pitr=True,
        log_retention_days=90 if prod else 14,
        event_archive_days=90 if prod else 7,
        throttle_rate=int(_ctx(node, "ig3:throttle-rate", 1000 if prod else 50)),
        throttle_burst=int(_ctx(node, "ig3:throttle-burst", 2000 if prod else 100)),
        authorizer_cache_s=300,
        cache_max_data_gb=int(_ctx(node, "ig3:cache-max-gb", 10 if prod else 1)),
        cache_max_ecpu_per_s=int(_ctx(node, "ig3:cache-max-ecpu", 100000 if prod else 5000)),
        cache_snapshot_days=7 if prod else 1,
        sagemaker=_bool(_ctx(node, "ig3:sagemaker", "on")),
        sagemaker_image=str(_ctx(node, "ig3:sagemaker-image", DEFAULT_LMI_IMAGE)),
        sagemaker_model=str(_ctx(node, "ig3:sagemaker-model", "Qwen/Qwen2.5-7B-Instruct" if prod
                                 else "HuggingFaceTB/SmolLM2-1.7B-Instruct")),
        sagemaker_instance=str(_ctx(node, "ig3:sagemaker-instance", "ml.g5.12xlarge" if prod else "ml.g5.xlarge")),
        sagemaker_tp_degree=tp,
        sagemaker_count=int(_ctx(node, "ig3:sagemaker-count", 1)),
        sagemaker_served_models=str(_ctx(node, "ig3:sagemaker-served-models",
                                         "qwen2.5-7b-instruct" if prod else "smollm2-1.7b-instruct")),
        greengrass_recipe=str(_ctx(node, "ig3:greengrass-recipe", "edge/greengrass/recipe.yaml")),
        sagemaker_endpoint=_ctx(node, "ig3:sagemaker-endpoint", None) or None,
        waf_acl_arn=_ctx(node, "ig3:waf-acl-arn", None),
    )
