"""The llm function's model configuration: LiteLLM's ``model_list`` format plus an ``ig3`` section.

Operators already know LiteLLM's proxy config, so the cloud side is declared the same way::

    model_list:                      # one entry per deployment; entries sharing a model_name
      - model_name: gpt-4o-mini      # form a model group (one routable target, load-balanced)
        litellm_params: {model: openai/gpt-4o-mini, api_base: https://api.openai.com/v1,
                         api_key: os.environ/OPENAI_API_KEY}
        model_info: {ig3_ttft_ms: 400, ig3_tokens_per_s: 80}
      - model_name: llama-70b        # a tensor-parallel SageMaker endpoint: one target
        litellm_params: {model: sagemaker_chat/llama-70b-tp4, aws_region_name: eu-west-1}
    router_settings: {num_retries: 2, fallbacks: [{llama-70b: [gpt-4o-mini]}]}
    ig3:
      aliases:
        ig3/auto: {edge: [smollm2-135m-instruct], cloud: gpt-4o-mini}
        ig3/fast: {edge: [smollm2-135m-instruct], cloud: gpt-4o-mini}

Deployments whose provider already speaks the OpenAI API (``openai/``, ``hosted_vllm/``...,
i.e. vLLM, TGI, llama-server, Ollama's /v1, OpenAI, SageMaker containers behind an OpenAI
front) go through the gateway's own pooled aiohttp client (``direct``); everything else
(Bedrock, Anthropic, ``sagemaker_chat``...) through LiteLLM's Router, imported lazily.
``model_info.ig3_via: litellm|direct`` overrides the choice.

The file path comes from ``IG3_LLM_CONFIG`` (YAML or JSON); ``IG3_LLM_CONFIG_JSON`` may carry
the document inline (containers without a mounted file).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

CONFIG_PATH_ENV = "IG3_LLM_CONFIG"
CONFIG_JSON_ENV = "IG3_LLM_CONFIG_JSON"
# LiteLLM providers whose wire format is OpenAI's own chat/completions/embeddings API.
OPENAI_COMPATIBLE = frozenset({"openai", "hosted_vllm", "lm_studio", "llamafile", "openai_like", "vllm"})
DEFAULT_ALIASES = ("ig3/auto", "ig3/fast")


@dataclass(frozen=True)
class Deployment:
    """One cloud deployment (a LiteLLM ``model_list`` entry)."""

    model_name: str  # the public name clients send
    provider: str
    upstream_model: str  # the model name the upstream expects
    litellm_params: dict[str, Any]
    direct: bool  # our own OpenAI client (True) or LiteLLM (False)
    api_base: str | None = None
    api_key: str | None = None
    ttft_ms: float = 500.0
    tokens_per_s: float = 60.0
    max_input_tokens: int | None = None
    kinds: frozenset[str] = frozenset({"chat", "completion", "embedding"})


@dataclass(frozen=True)
class Alias:
    name: str
    edge: tuple[str, ...] = ()  # edge model names, in preference order
    cloud: str | None = None  # a cloud model group
    policy: str = "auto"  # auto (edge first within the SLO) | fast (lowest expected latency)


@dataclass(frozen=True)
class GatewayConfig:
    groups: dict[str, tuple[Deployment, ...]] = field(default_factory=dict)
    aliases: dict[str, Alias] = field(default_factory=dict)
    router_settings: dict[str, Any] = field(default_factory=dict)
    litellm_settings: dict[str, Any] = field(default_factory=dict)
    model_list: tuple[dict[str, Any], ...] = ()

    def needs_litellm(self) -> bool:
        return any(not d.direct for ds in self.groups.values() for d in ds)


def _secret(value: Any) -> Any:
    """LiteLLM's ``os.environ/NAME`` convention for secrets kept out of the file."""
    if isinstance(value, str) and value.startswith("os.environ/"):
        return os.environ.get(value.split("/", 1)[1])
    return value


def parse_config(doc: dict[str, Any]) -> GatewayConfig:
    groups: dict[str, list[Deployment]] = {}
    entries = doc.get("model_list") or []
    if not isinstance(entries, (list, tuple)):
        raise ValueError("model_list must be a list")
    for i, entry in enumerate(entries):
        name = entry.get("model_name")
        params = dict(entry.get("litellm_params") or {})
        info = entry.get("model_info") or {}
        if not name or not params.get("model"):
            raise ValueError(f"model_list[{i}] needs model_name and litellm_params.model")
        provider, _, upstream = str(params["model"]).partition("/")
        if not upstream:
            provider, upstream = "openai", provider
        via = info.get("ig3_via")
        direct = (via == "direct") or (via is None and provider in OPENAI_COMPATIBLE and bool(params.get("api_base")))
        kinds = info.get("ig3_kinds") or (["embedding"] if info.get("mode") == "embedding" else
                                          ["chat", "completion", "embedding"])
        groups.setdefault(name, []).append(Deployment(
            model_name=name, provider=provider, upstream_model=upstream, litellm_params=params, direct=direct,
            api_base=(params.get("api_base") or "").rstrip("/") or None, api_key=_secret(params.get("api_key")),
            ttft_ms=float(info.get("ig3_ttft_ms", 500.0)), tokens_per_s=float(info.get("ig3_tokens_per_s", 60.0)),
            max_input_tokens=info.get("max_input_tokens"), kinds=frozenset(kinds)))
    ig3 = doc.get("ig3") or {}
    aliases: dict[str, Alias] = {}
    for name, spec in (ig3.get("aliases") or {}).items():
        spec = spec or {}
        edge = spec.get("edge") or []
        aliases[name] = Alias(name=name, edge=tuple([edge] if isinstance(edge, str) else edge),
                              cloud=spec.get("cloud"),
                              policy=spec.get("policy") or ("fast" if name.endswith("/fast") else "auto"))
    for name in DEFAULT_ALIASES:
        aliases.setdefault(name, Alias(name=name, policy="fast" if name.endswith("/fast") else "auto"))
    for a in aliases.values():
        if a.cloud and a.cloud not in groups:
            raise ValueError(f"alias {a.name}: unknown cloud model group {a.cloud}")
    return GatewayConfig(groups={k: tuple(v) for k, v in groups.items()}, aliases=aliases,
                         router_settings=dict(doc.get("router_settings") or {}),
                         litellm_settings=dict(doc.get("litellm_settings") or {}),
                         model_list=tuple(entries))


def load_config() -> GatewayConfig:
    inline = os.environ.get(CONFIG_JSON_ENV)
    if inline:
        return parse_config(json.loads(inline))
    path = os.environ.get(CONFIG_PATH_ENV)
    if not path:
        return parse_config({})
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if path.endswith((".yaml", ".yml")):
        import yaml  # a LiteLLM dependency; only loaded for YAML configs

        return parse_config(yaml.safe_load(text) or {})
    return parse_config(json.loads(text))
