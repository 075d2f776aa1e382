"""The price book: configuration in, integer micro-credit costs out. Pure (no AWS imports).

Configuration is a JSON document (``pricing.json`` next to this module; ``IG3_PRICING_PATH``
points at another). Numbers are parsed as ``Decimal`` (JSON floats included, via
``parse_float=Decimal``), so ``"0.25"`` or ``0.25`` is exactly a quarter of a micro-credit.

Rates, all in micro-credits:
- ``prompt_per_1k`` / ``completion_per_1k``: per 1,000 prompt / completion tokens;
- ``sagemaker_per_second``: per second of SageMaker time (cloud route only, from ``sagemaker_ms``);
- ``per_request``: flat fee per request (e.g. for ``task`` kinds that have no tokens);
- ``estimate_sagemaker_seconds``: the SageMaker time a hold reserves (estimates only).

Resolution, first hit wins, field by field:
``models[model][route].kinds[kind]`` -> ``models[model][route]`` -> ``default[route].kinds[kind]``
-> ``default[route]``. Unknown models fall through to ``default``, so they are never free.

Rounding rule (the only one): the exact decimal cost of one request is rounded **up**
(``ROUND_CEILING``) to a whole micro-credit, once, at the end. A request is never
under-billed and never over-billed by a whole micro-credit; sums of per-request costs are then
exact integers. Estimates use the same function with ``max_tokens`` completion tokens and the
estimated SageMaker time, so ``estimate >= actual`` whenever the request stays in its limits.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any, Literal

Route = Literal["edge", "cloud"]
ROUTES: tuple[str, ...] = ("edge", "cloud")
KINDS: tuple[str, ...] = ("chat", "completion", "embedding", "task")
PRICING_PATH_ENV = "IG3_PRICING_PATH"
DEFAULT_PRICING_PATH = Path(__file__).with_name("pricing.json")
_FIELDS = (
    "prompt_per_1k",
    "completion_per_1k",
    "sagemaker_per_second",
    "per_request",
    "estimate_sagemaker_seconds",
)
_THOUSAND = Decimal(1000)


class PricingError(ValueError):
    """The price book is malformed (a negative or non-numeric rate, an unknown route...)."""


@dataclass(frozen=True)
class Rates:
    prompt_per_1k: Decimal = Decimal(0)
    completion_per_1k: Decimal = Decimal(0)
    sagemaker_per_second: Decimal = Decimal(0)
    per_request: Decimal = Decimal(0)
    estimate_sagemaker_seconds: Decimal = Decimal(0)


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        raise PricingError(f"{where}: expected a number or decimal string, got {type(value).__name__}")
    try:
        d = Decimal(value)
    except Exception:  # noqa: BLE001 - decimal.InvalidOperation and friends
        raise PricingError(f"{where}: not a decimal number: {value!r}") from None
    if not d.is_finite() or d < 0:
        raise PricingError(f"{where}: must be a finite, non-negative number, got {value!r}")
    return d


def _layer(raw: Any, where: str) -> tuple[dict[str, Decimal], dict[str, dict[str, Decimal]]]:
    """One route block -> (its fields, its per-kind overrides)."""
    if not isinstance(raw, dict):
        raise PricingError(f"{where}: expected an object")
    fields: dict[str, Decimal] = {}
    kinds: dict[str, dict[str, Decimal]] = {}
    for key, value in raw.items():
        if key == "kinds":
            if not isinstance(value, dict):
                raise PricingError(f"{where}.kinds: expected an object")
            for kind, block in value.items():
                if kind not in KINDS:
                    raise PricingError(f"{where}.kinds: unknown kind {kind!r} (known: {', '.join(KINDS)})")
                if not isinstance(block, dict):
                    raise PricingError(f"{where}.kinds.{kind}: expected an object")
                kinds[kind] = {}
                for f, v in block.items():
                    if f not in _FIELDS:
                        raise PricingError(f"{where}.kinds.{kind}: unknown field {f!r}")
                    kinds[kind][f] = _decimal(v, f"{where}.kinds.{kind}.{f}")
        elif key in _FIELDS:
            fields[key] = _decimal(value, f"{where}.{key}")
        else:
            raise PricingError(f"{where}: unknown field {key!r}")
    return fields, kinds


class PriceBook:
    """Immutable, validated pricing. ``cost``/``estimate`` return integer micro-credits."""

    def __init__(self, document: dict[str, Any]):
        if not isinstance(document, dict):
            raise PricingError("pricing document must be a JSON object")
        self.version = str(document.get("version", "1"))
        default = document.get("default")
        if not isinstance(default, dict):
            raise PricingError("pricing document needs a 'default' block (prices for unknown models)")
        self._default = self._routes(default, "default")
        for route in ROUTES:
            if route not in self._default:
                raise PricingError(f"default: needs a {route!r} block")
        storage = document.get("storage", {})
        if not isinstance(storage, dict) or set(storage) - {"vector_gib_month"}:
            raise PricingError("storage: expected an object with 'vector_gib_month'")
        # RAG vector storage (ig3.billing.storage): micro-credits per GiB of vectors held for 30 days.
        self.storage_vector_gib_month = _decimal(
            storage.get("vector_gib_month", 0), "storage.vector_gib_month"
        )
        models = document.get("models", {})
        if not isinstance(models, dict):
            raise PricingError("models: expected an object")
        self._models = {
            str(name).lower(): self._routes(block, f"models.{name}") for name, block in models.items()
        }

    @staticmethod
    def _routes(raw: Any, where: str) -> dict[str, tuple[dict[str, Decimal], dict[str, dict[str, Decimal]]]]:
        if not isinstance(raw, dict):
            raise PricingError(f"{where}: expected an object")
        out = {}
        for route, block in raw.items():
            if route not in ROUTES:
                raise PricingError(f"{where}: unknown route {route!r} (known: edge, cloud)")
            out[route] = _layer(block, f"{where}.{route}")
        return out

    @classmethod
    def from_json(cls, text: str | bytes) -> PriceBook:
        try:
            doc = json.loads(text, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise PricingError(f"pricing document is not valid JSON: {exc}") from None
        return cls(doc)

    @classmethod
    def from_path(cls, path: str | Path) -> PriceBook:
        return cls.from_json(Path(path).read_bytes())

    @classmethod
    def from_env(cls) -> PriceBook:
        return cls.from_path(os.environ.get(PRICING_PATH_ENV) or DEFAULT_PRICING_PATH)

    def knows(self, model: str) -> bool:
        return model.lower() in self._models

    def rates(self, model: str, route: str, kind: str) -> Rates:
        if route not in ROUTES:
            raise PricingError(f"unknown route {route!r}")
        if kind not in KINDS:
            raise PricingError(f"unknown kind {kind!r}")
        chain: list[dict[str, Decimal]] = []
        model_routes = self._models.get(model.lower(), {})
        for routes in (model_routes, self._default):
            if route in routes:
                fields, kinds = routes[route]
                if kind in kinds:
                    chain.append(kinds[kind])
                chain.append(fields)
        resolved = {}
        for f in _FIELDS:
            for layer in chain:
                if f in layer:
                    resolved[f] = layer[f]
                    break
        return Rates(**resolved)

    def exact_cost(
        self,
        model: str,
        route: str,
        kind: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        sagemaker_ms: int = 0,
    ) -> Decimal:
        for name, value in (
            ("prompt_tokens", prompt_tokens),
            ("completion_tokens", completion_tokens),
            ("sagemaker_ms", sagemaker_ms),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PricingError(f"{name} must be a non-negative integer")
        r = self.rates(model, route, kind)
        cost = (
            Decimal(prompt_tokens) * r.prompt_per_1k + Decimal(completion_tokens) * r.completion_per_1k
        ) / _THOUSAND
        if route == "cloud":
            cost += Decimal(sagemaker_ms) * r.sagemaker_per_second / _THOUSAND
        return cost + r.per_request

    def cost(
        self,
        model: str,
        route: str,
        kind: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        sagemaker_ms: int = 0,
    ) -> int:
        """The one rounding: exact decimal cost, rounded up to a whole micro-credit."""
        exact = self.exact_cost(
            model,
            route,
            kind,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            sagemaker_ms=sagemaker_ms,
        )
        return int(exact.to_integral_value(rounding=ROUND_CEILING))

    def estimate(self, model: str, route: str, kind: str, prompt_tokens: int, max_tokens: int) -> int:
        """The most a request within its limits can cost: what a hold reserves."""
        r = self.rates(model, route, kind)
        sagemaker_ms = 0
        if route == "cloud":
            sagemaker_ms = int(
                (r.estimate_sagemaker_seconds * _THOUSAND).to_integral_value(rounding=ROUND_CEILING)
            )
        return self.cost(
            model,
            route,
            kind,
            prompt_tokens=prompt_tokens,
            completion_tokens=max_tokens,
            sagemaker_ms=sagemaker_ms,
        )


_cached: tuple[str, PriceBook] | None = None


def price_book() -> PriceBook:
    """The process's price book (re-read when ``IG3_PRICING_PATH`` changes)."""
    global _cached
    path = os.environ.get(PRICING_PATH_ENV) or str(DEFAULT_PRICING_PATH)
    if _cached is None or _cached[0] != path:
        _cached = (path, PriceBook.from_path(path))
    return _cached[1]
