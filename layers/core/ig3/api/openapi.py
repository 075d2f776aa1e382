"""The OpenAPI 3.1 document of the HTTP API, generated from the topology's routes and the pydantic
request models the handlers validate with — never written by hand, so it cannot drift from them.

Every topology route is in it (the api, rag, llm and telegram functions), with its path
parameters, the query parameters its handler reads, its request body schema (the very model
``parse_body`` validates against, or the OpenAI request model for the llm routes), its auth
(bearer JWT or API key; none for the login and registration flows) and the error shape every
4xx/5xx uses. The local front serves it at ``GET /openapi.json``; ``make fuzz`` reads it.

Responses are documented by status and the error shape only: the success bodies are plain dicts
built by the handlers, and a schema copied from them by hand would be the drift this avoids.
"""
from __future__ import annotations

import importlib
import re
from typing import Any

from ig3.topology import TOPOLOGY, Topology

# (method, path) -> "module:Model" the handler validates the JSON body against.
REQUEST_BODIES: dict[tuple[str, str], str] = {
    ("POST", "/v1/auth/login"): "ig3.api.auth_routes:SiweLogin",
    ("POST", "/v1/auth/did/challenge"): "ig3.api.auth_routes:DidChallengeRequest",
    ("POST", "/v1/auth/did/login"): "ig3.api.auth_routes:DidLoginRequest",
    ("POST", "/v1/keys"): "ig3.api.keys_routes:CreateKey",
    ("POST", "/v1/tasks"): "ig3.tasks.model:TaskSpec",
    ("POST", "/v1/devices/challenge"): "ig3.devices.model:ChallengeRequest",
    ("POST", "/v1/devices/register"): "ig3.devices.model:RegisterRequest",
    ("POST", "/v1/collections"): "ig3.rag.models:CreateCollection",
    ("POST", "/v1/collections/{name}/documents"): "ig3.rag.models:AddDocuments",
    ("POST", "/v1/collections/{name}/documents/delete"): "ig3.rag.models:DeleteDocuments",
    ("POST", "/v1/collections/{name}/query"): "ig3.rag.models:Query",
    ("POST", "/v1/chat/completions"): "ig3.llm.models:ChatCompletionRequest",
    ("POST", "/v1/completions"): "ig3.llm.models:CompletionRequest",
    ("POST", "/v1/embeddings"): "ig3.llm.models:EmbeddingRequest",
    ("POST", "/v1/telegram/link"): "ig3_functions.telegram.handler:LinkRequest",
}
# A Telegram Update: any JSON object (the bot reads the fields it knows and ignores the rest).
FREE_FORM_BODIES = {("POST", "/v1/telegram/webhook")}

_INT = {"type": "integer"}
_STR = {"type": "string"}
# (method, path) -> query parameters the handler reads: (name, schema, description).
QUERY_PARAMETERS: dict[tuple[str, str], tuple[tuple[str, dict[str, Any], str], ...]] = {
    ("POST", "/v1/tasks"): (("wait", {"type": "integer", "minimum": 0, "maximum": 25},
                             "seconds to wait for a terminal state (else 202 + poll)"),),
    ("GET", "/v1/devices"): (("limit", {"type": "integer", "minimum": 1}, "page size"),
                             ("cursor", _STR, "the previous page's next_cursor")),
    ("GET", "/v1/billing/usage"): (("format", {"type": "string", "enum": ["json", "csv"]}, "json or csv"),
                                   ("limit", {"type": "integer", "minimum": 1}, "page size"),
                                   ("since", _STR, "ISO-8601 or Unix seconds"),
                                   ("until", _STR, "ISO-8601 or Unix seconds"),
                                   ("model", _STR, "only this model"),
                                   ("cursor", _STR, "the previous page's next_cursor")),
}
HEADER_PARAMETERS: dict[tuple[str, str], tuple[tuple[str, dict[str, Any], str], ...]] = {
    ("POST", "/v1/tasks"): (("Idempotency-Key", {"type": "string", "maxLength": 256},
                             "makes a submission safe to retry"),),
    ("POST", "/v1/telegram/webhook"): (("X-Telegram-Bot-Api-Secret-Token", _STR, "the webhook's secret"),),
}

ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["type", "message"], "properties": {
        "type": _STR, "message": _STR, "code": {"type": ["string", "null"]}, "param": {"type": ["string", "null"]}}}},
}
_PATH_PARAM = re.compile(r"\{(\w+)\}")


def _model(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _hoist_defs(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Move pydantic's ``$defs`` into ``components/schemas`` (refs already point there)."""
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    return schema


def _operation_id(method: str, path: str) -> str:
    words = [w for w in re.split(r"[/{}]+", path) if w and w != "v1"]
    return method.lower() + "_" + "_".join(w.replace("-", "_") for w in words)


def build_openapi(topology: Topology = TOPOLOGY, *, server_url: str | None = None) -> dict[str, Any]:
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for route in topology.routes:
        key = (route.method, route.path)
        op: dict[str, Any] = {
            "operationId": _operation_id(route.method, route.path),
            "tags": [route.function],
            "parameters": [],
            "responses": {
                "200": {"description": "success (JSON)"},
                "4XX": {"description": "bad input, auth, limits", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        }
        for name in _PATH_PARAM.findall(route.path):
            op["parameters"].append({"name": name, "in": "path", "required": True,
                                     "schema": {"type": "string", "minLength": 1}})
        for name, schema, doc in QUERY_PARAMETERS.get(key, ()):
            op["parameters"].append({"name": name, "in": "query", "required": False, "schema": schema,
                                     "description": doc})
        for name, schema, doc in HEADER_PARAMETERS.get(key, ()):
            op["parameters"].append({"name": name, "in": "header", "required": False, "schema": schema,
                                     "description": doc})
        if key in REQUEST_BODIES:
            model = _model(REQUEST_BODIES[key])
            schema = _hoist_defs(model.model_json_schema(ref_template="#/components/schemas/{model}"), components)
            components.setdefault(model.__name__, schema)
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        elif key in FREE_FORM_BODIES:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
        if route.auth != "none":
            op["security"] = [{"bearer": []}]
        else:
            op["security"] = []
        paths.setdefault(route.path, {})[route.method.lower()] = op
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "ig3-gateway", "version": "1",
                 "description": "AI Gateway, LLM Gateway (OpenAI-compatible) and device registration. "
                                "Generated from the topology's routes and the request models."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "an ES256 access token (SIWE or DID login) or an API key (ig3_sk_...)"}}},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
