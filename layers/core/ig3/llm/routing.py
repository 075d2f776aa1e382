"""Edge-vs-cloud routing policy — pure: features and a capacity snapshot in, a decision out.

The model a client names is one of:
- an alias (``ig3/auto``, ``ig3/fast``): the policy below picks edge or cloud (an alias with no
  configured edge models considers every model the live catalogue lists);
- an edge model (served by devices, as the scheduler's live catalogue lists it): edge;
- a cloud model group from the config: cloud.

``ig3/auto`` is edge-first (the network's purpose, and cheaper) as long as the request fits:
1. Hard limits for the edge — a tiny local model on an M1 cannot serve everything: tool calls
   and JSON mode, n>1, non-text content, a prompt plus output beyond the device context, and
   mostly non-Latin text (small models are English-centric) go to the cloud.
2. Live capacity: no device online for the model -> cloud. Devices busy: the request would
   queue; the queue wait enters the latency estimate.
3. Urgency: the expected edge latency (queue + prompt processing + output at the devices'
   measured tokens/s) must meet the SLO — from ``x-ig3-slo-ms`` or the urgency class
   (``x-ig3-urgency``: high 3 s, normal 20 s, low 120 s). If it does not and the cloud is
   faster, cloud; otherwise edge (the cloud would not meet it either).
``ig3/fast`` takes the lower expected latency of the feasible routes.

A model group (devices serving one model together over llama.cpp RPC, or a tensor-parallel
SageMaker endpoint) is one target here: the catalogue reports it as one capacity entry whose
health is the group's, so routing never splits a group.
The reason string is returned to the client in ``x-ig3-route-reason``: short, no prompt text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ig3.errors import BadRequest, NotFound, Unavailable
from ig3.llm.config import Alias, Deployment, GatewayConfig

Route = Literal["edge", "cloud"]
URGENCY_SLO_MS = {"high": 3_000.0, "normal": 20_000.0, "low": 120_000.0}
DEFAULT_OUTPUT_TOKENS = 256
PREFILL_SPEEDUP = 8.0  # prompt processing runs ~8x faster than generation on llama.cpp (CPU/Metal)
MAX_NON_LATIN_SHARE = 0.3


@dataclass(frozen=True)
class EdgeCapacity:
    """What the scheduler's live state says about one edge model (or model group)."""

    model: str
    devices: int  # online devices (a model group counts as one)
    free_slots: int  # capacity - in_flight, summed
    queued: int = 0
    tokens_per_s: float = 20.0  # median generation speed across the devices
    ctx: int = 2048  # the smallest context among them
    kinds: frozenset[str] = frozenset({"chat", "completion"})


@dataclass(frozen=True)
class Features:
    kind: str  # chat | completion | embedding
    prompt_tokens: int  # estimate
    max_tokens: int | None
    structured: bool = False  # tools or JSON mode
    n: int = 1
    text_only: bool = True
    non_latin: float = 0.0
    urgency: str = "normal"
    slo_ms: float | None = None


@dataclass(frozen=True)
class Decision:
    route: Route
    model: str  # the concrete edge model or cloud group
    reason: str
    expected_ms: float | None = None
    deployments: tuple[Deployment, ...] = ()  # cloud: the group's deployments


def edge_latency_ms(cap: EdgeCapacity, f: Features) -> float:
    out = f.max_tokens or DEFAULT_OUTPUT_TOKENS
    tps = max(cap.tokens_per_s, 0.1)
    one = 1000.0 * (f.prompt_tokens / (tps * PREFILL_SPEEDUP) + out / tps)
    # Waiting requests ahead of us, spread over the devices, each taking about as long as ours.
    waiting = 0.0 if cap.free_slots > 0 else (cap.queued + 1) / max(cap.devices, 1) * one
    return one + waiting


def cloud_latency_ms(d: Deployment, f: Features) -> float:
    out = f.max_tokens or DEFAULT_OUTPUT_TOKENS
    return d.ttft_ms + 1000.0 * out / max(d.tokens_per_s, 0.1)


def edge_unfit(cap: EdgeCapacity | None, f: Features) -> str | None:
    """Why the edge cannot take this request (None when it can)."""
    if cap is None or cap.devices <= 0:
        return "no edge device online for the model"
    if f.kind not in cap.kinds:
        return f"edge model does not serve {f.kind}"
    if f.n > 1:
        return "n>1 is not served on the edge"
    if not f.text_only:
        return "non-text content needs the cloud"
    if f.structured:
        return "tools/JSON mode need a larger model"
    if f.prompt_tokens + (f.max_tokens or DEFAULT_OUTPUT_TOKENS if f.kind != "embedding" else 0) > cap.ctx:
        return f"prompt+output exceed the edge context ({cap.ctx})"
    if f.non_latin > MAX_NON_LATIN_SHARE:
        return "language needs a larger model"
    return None


class Router:
    """Resolves a request's model to a decision against the config and a capacity snapshot."""

    def __init__(self, config: GatewayConfig):
        self.config = config

    def decide(self, model: str, f: Features, edge: dict[str, EdgeCapacity]) -> Decision:
        alias = self.config.aliases.get(model)
        if alias is not None:
            return self._alias(alias, f, edge)
        group = self.config.groups.get(model)
        if group is not None:
            usable = tuple(d for d in group if f.kind in d.kinds)
            if not usable:
                raise BadRequest(f"model {model} does not serve {f.kind} requests", code="unsupported_model")
            return Decision("cloud", model, "cloud model requested", deployments=usable)
        cap = edge.get(model)
        if cap is not None:
            why = edge_unfit(cap, f)
            if why:
                if cap.devices <= 0:
                    raise Unavailable(f"no device serves {model} right now", code="no_capacity")
                raise BadRequest(f"{model}: {why}", code="unsupported_on_edge")
            return Decision("edge", model, "edge model requested", expected_ms=edge_latency_ms(cap, f))
        raise NotFound(f"The model `{model}` does not exist or you do not have access to it.",
                       code="model_not_found")

    def _alias(self, alias: Alias, f: Features, edge: dict[str, EdgeCapacity]) -> Decision:
        cloud = None
        if alias.cloud:
            cloud = tuple(d for d in self.config.groups[alias.cloud] if f.kind in d.kinds) or None
        slo = f.slo_ms if f.slo_ms is not None else URGENCY_SLO_MS.get(f.urgency, URGENCY_SLO_MS["normal"])
        best: tuple[float, str, EdgeCapacity] | None = None
        unfit = "no edge model online"
        # An alias without an explicit edge list may use any model the fleet serves right now.
        for name in alias.edge or sorted(edge):
            cap = edge.get(name)
            why = edge_unfit(cap, f)
            if why:
                unfit = why
                continue
            assert cap is not None
            ms = edge_latency_ms(cap, f)
            if best is None or ms < best[0]:
                best = (ms, name, cap)
        cloud_ms = min(cloud_latency_ms(d, f) for d in cloud) if cloud else None

        def to_cloud(reason: str) -> Decision:
            return Decision("cloud", alias.cloud or "", reason, expected_ms=cloud_ms, deployments=cloud or ())

        if best is None:
            if cloud is None:
                raise Unavailable(f"{alias.name}: {unfit}, and no cloud model is configured", code="no_capacity")
            return to_cloud(unfit)
        edge_ms, name, cap = best
        busy = "" if cap.free_slots > 0 else f", {cap.queued} queued"
        if cloud is None:
            return Decision("edge", name, f"edge only (est {edge_ms:.0f} ms{busy})", expected_ms=edge_ms)
        if alias.policy == "fast":
            if cloud_ms is not None and cloud_ms < edge_ms:
                return to_cloud(f"cloud faster (est {cloud_ms:.0f} ms < edge {edge_ms:.0f} ms{busy})")
            return Decision("edge", name, f"edge faster (est {edge_ms:.0f} ms <= cloud {cloud_ms:.0f} ms)",
                            expected_ms=edge_ms)
        if edge_ms <= slo:
            return Decision("edge", name, f"edge fits {f.urgency} SLO (est {edge_ms:.0f} ms <= {slo:.0f} ms{busy})",
                            expected_ms=edge_ms)
        if cloud_ms is not None and cloud_ms < edge_ms:
            return to_cloud(f"edge misses SLO (est {edge_ms:.0f} ms > {slo:.0f} ms{busy}); cloud est {cloud_ms:.0f} ms")
        return Decision("edge", name, f"edge misses SLO but cloud is slower (est {edge_ms:.0f} ms)",
                        expected_ms=edge_ms)
