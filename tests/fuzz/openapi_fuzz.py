"""Fuzz every operation of an OpenAPI document over HTTP; any 5xx answer is a failure.

What schemathesis does, on the libraries the lock already has (hypothesis): for each operation
of ``/openapi.json`` (generated from the topology's routes and the request models, see
``ig3.api.openapi``), hypothesis draws

- *positive* cases: path, query and header parameters and a JSON body valid for the schema;
- *negative* cases: the same with one body field replaced by a value of another type, a
  required field dropped, any JSON value instead of the body, bytes that are not JSON or not
  UTF-8, a wrong content type, no credentials or a forged one, odd characters in path params.

Each case is sent; the answer must not be a 5xx, and a 4xx must carry the project's error shape
(``{"error": {...}}``). The first failure of each (operation, status) is kept with the case that
caused it, so a report names the request to replay. No shrinking: the run stays bounded.

Used by ``make fuzz`` (``python -m tests.fuzz.fuzz_api``) against ``ig3 up``, and by
``tests/fuzz/test_fuzz_api.py`` with fewer examples.
"""
from __future__ import annotations

import json
import string
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

JSON_SCALARS = st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=20)
ANY_JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)
# Text that exercises decoders: ASCII, control characters, surrogates-free unicode, URL syntax.
FUZZ_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=24) \
    | st.sampled_from(["", " ", "..", "../..", "%00", "%", "a/b", "null", "0", "-1", "1e309", "\u202e", "x" * 300])
MAX_STRING = 48
MAX_ITEMS = 4
# Query parameters the fuzzer keeps small: ``wait`` holds the request open up to its value.
QUERY_OVERRIDES = {"wait": st.integers(0, 2) | st.sampled_from(["", "-1", "abc", "99999999999999999999"])}


@dataclass
class Case:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    kind: str = "positive"

    def describe(self) -> str:
        body = (self.body or b"")[:300]
        return f"{self.kind}: {self.method} {self.path} query={self.query} headers={sorted(self.headers)} body={body!r}"


@dataclass
class Report:
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)  # (operation, problem) -> first case
    seconds: float = 0.0
    operations: int = 0

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)


class SchemaStrategies:
    """JSON Schema (the subset pydantic emits) -> hypothesis strategies of valid instances."""

    def __init__(self, components: dict[str, Any]):
        self.components = components

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def of(self, schema: dict[str, Any] | bool, depth: int = 0) -> st.SearchStrategy:
        if schema is True or schema == {}:
            return ANY_JSON
        if schema is False:
            return st.nothing()
        schema = self.resolve(schema)
        if depth > 6:
            return st.none()
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return st.one_of(*(self.of(s, depth + 1) for s in schema[key]))
        if "allOf" in schema:
            return self.of(schema["allOf"][0], depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            return st.one_of(*(self.of({**schema, "type": k}, depth + 1) for k in kind))
        if kind == "string":
            return self._string(schema)
        if kind == "integer":
            lo, hi = schema.get("minimum"), schema.get("maximum")
            lo = schema["exclusiveMinimum"] + 1 if "exclusiveMinimum" in schema else lo
            hi = schema["exclusiveMaximum"] - 1 if "exclusiveMaximum" in schema else hi
            return st.integers(lo, hi)
        if kind == "number":
            return st.floats(schema.get("minimum", schema.get("exclusiveMinimum")),
                             schema.get("maximum", schema.get("exclusiveMaximum")),
                             exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema,
                             allow_nan=False, allow_infinity=False)
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        if kind == "array":
            lo = schema.get("minItems", 0)
            hi = min(schema.get("maxItems", lo + MAX_ITEMS), lo + MAX_ITEMS)
            items = schema.get("items", {})
            if "prefixItems" in schema:
                return st.tuples(*(self.of(s, depth + 1) for s in schema["prefixItems"])).map(list)
            return st.lists(self.of(items, depth + 1), min_size=lo, max_size=hi)
        if kind == "object" or "properties" in schema:
            return self._object(schema, depth)
        return ANY_JSON

    def _string(self, schema: dict[str, Any]) -> st.SearchStrategy:
        lo = schema.get("minLength", 0)
        hi = min(schema.get("maxLength", lo + MAX_STRING), lo + MAX_STRING)
        if "pattern" in schema:
            try:
                return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: lo <= len(s) <= hi) \
                    if hi >= lo else st.nothing()
            except Exception:  # noqa: BLE001 — a pattern Python's re cannot take: plain text then
                pass
        return st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=lo, max_size=hi)

    def _object(self, schema: dict[str, Any], depth: int) -> st.SearchStrategy:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = {k: self.of(v, depth + 1) for k, v in props.items() if k in required}
        optional = {k: self.of(v, depth + 1) for k, v in props.items() if k not in required}
        extra = schema.get("additionalProperties")
        base = st.fixed_dictionaries(fixed, optional=optional)
        if isinstance(extra, dict) and not props:
            return st.dictionaries(st.text(max_size=12), self.of(extra, depth + 1), max_size=3)
        return base


def _body_strategies(gen: SchemaStrategies, schema: dict[str, Any] | None) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    """(positive JSON bodies, negative bodies as bytes)."""
    raw_garbage = st.binary(max_size=64) | st.sampled_from([b"", b"{", b"[]", b"null", b"\xff\xfe", b"{\"a\":",
                                                           b"1" * 400, b"{" * 200 + b"}" * 200])
    any_json = ANY_JSON.map(lambda v: json.dumps(v).encode())
    if schema is None:
        return st.none(), raw_garbage | any_json
    valid = gen.of(schema)
    resolved = gen.resolve(schema)
    props = list(resolved.get("properties", {}))
    required = list(resolved.get("required", ()))
    negatives = [raw_garbage, any_json]
    if props:
        def wrong_type(draw_value: tuple[dict, str, Any]) -> bytes:
            body, key, value = draw_value
            return json.dumps({**body, key: value}).encode()
        negatives.append(st.tuples(valid, st.sampled_from(props), ANY_JSON).map(wrong_type))
    if required:
        negatives.append(st.tuples(valid, st.sampled_from(required)).map(
            lambda bk: json.dumps({k: v for k, v in bk[0].items() if k != bk[1]}).encode()))
    return valid, st.one_of(*negatives)


def _parameter_strategy(gen: SchemaStrategies, param: dict[str, Any], negative: bool) -> st.SearchStrategy:
    name = param["name"]
    if param["in"] == "query" and name in QUERY_OVERRIDES:
        return QUERY_OVERRIDES[name]
    valid = gen.of(param.get("schema", {"type": "string"})).map(lambda v: v if isinstance(v, str) else json.dumps(v))
    return FUZZ_TEXT if negative else valid


def cases(doc: dict[str, Any], method: str, path: str, op: dict[str, Any], *, negative: bool) -> st.SearchStrategy:
    gen = SchemaStrategies(doc.get("components", {}).get("schemas", {}))
    params = op.get("parameters", [])
    body_schema = None
    content = (op.get("requestBody") or {}).get("content", {}).get("application/json")
    if content is not None:
        body_schema = content.get("schema", {})
    valid_body, bad_body = _body_strategies(gen, body_schema)
    secured = bool(op.get("security"))

    @st.composite
    def build(draw: Any) -> Case:
        values: dict[str, dict[str, str]] = {"path": {}, "query": {}, "header": {}}
        for p in params:
            neg_param = negative and draw(st.booleans())
            if p["in"] != "path" and not p.get("required") and not draw(st.booleans()):
                continue
            value = draw(_parameter_strategy(gen, p, neg_param))
            values[p["in"]][p["name"]] = str(value)
        url_path = path
        for name, value in values["path"].items():
            url_path = url_path.replace("{" + name + "}", quote(value or "x", safe=""))
        headers = {k: v for k, v in values["header"].items() if _header_ok(k, v)}
        kind = "negative" if negative else "positive"
        body: bytes | None = None
        if body_schema is not None or (negative and method in ("POST", "PUT", "PATCH")):
            body = draw(bad_body) if negative else json.dumps(draw(valid_body)).encode()
        headers["Content-Type"] = "application/json"
        if negative and draw(st.integers(0, 5)) == 0:
            headers["Content-Type"] = draw(st.sampled_from(["text/plain", "application/x-www-form-urlencoded", ""]))
        if secured:
            auth = draw(st.integers(0, 9)) if negative else 9
            headers["Authorization"] = ("" if auth == 0 else "Bearer" if auth == 1 else
                                        "Bearer ig3_sk_forged" if auth == 2 else "Basic Zm9vOmJhcg==" if auth == 3 else
                                        "Bearer {key}")
        return Case(method=method, path=url_path, query=values["query"], headers=headers, body=body, kind=kind)

    return build()


def _header_ok(name: str, value: str) -> bool:
    # httpx refuses non-latin-1 / control characters in headers: those never reach a server anyway.
    return all(c in string.printable and c not in "\r\n\x0b\x0c" for c in value)


def _error_shape_ok(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and "message" in body["error"]


def fuzz(base_url: str, api_key: str, *, examples: int = 50, doc: dict[str, Any] | None = None,
         timeout_s: float = 60.0, seed: int | None = None, log: Any = print) -> Report:
    """Fuzz every operation; ``examples`` positive and as many negative cases each."""
    report = Report()
    t0 = time.time()
    with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
        doc = doc or client.get("/openapi.json").raise_for_status().json()
        for path, item in doc["paths"].items():
            for method, op in item.items():
                report.operations += 1
                name = f"{method.upper()} {path}"
                before = dict(report.statuses)
                t_op = time.time()
                for negative in (False, True):
                    _fuzz_operation(client, api_key, report, name, cases(doc, method.upper(), path, op,
                                                                         negative=negative), examples, seed)
                got = {s: n - before.get(s, 0) for s, n in report.statuses.items() if n - before.get(s, 0)}
                log(f"{name:48} {time.time() - t_op:6.1f} s  {dict(sorted(got.items()))}")
    report.seconds = round(time.time() - t0, 1)
    return report


def _fuzz_operation(client: httpx.Client, api_key: str, report: Report, name: str, strategy: st.SearchStrategy,
                    examples: int, seed: int | None) -> None:
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=seed is not None)
    @given(strategy)
    def run(case: Case) -> None:
        headers = {k: v.replace("{key}", api_key) for k, v in case.headers.items()}
        try:
            r = client.request(case.method, case.path, params=case.query, headers=headers, content=case.body)
        except httpx.TimeoutException:
            report.failures.setdefault((name, "timeout"), case.describe())
            return
        except httpx.LocalProtocolError:
            return  # a request the client itself refuses to send (an illegal header) never reaches a server
        report.requests += 1
        report.statuses[r.status_code] = report.statuses.get(r.status_code, 0) + 1
        if r.status_code >= 500:
            report.failures.setdefault((name, f"{r.status_code}"), case.describe() + f" -> {r.text[:300]}")
        elif 400 <= r.status_code < 500 and not _error_shape_ok(r):
            report.failures.setdefault((name, f"{r.status_code} without the error shape"),
                                       case.describe() + f" -> {r.text[:300]}")

    run()
