"""The generated OpenAPI document: valid, complete, and in step with the topology."""
from __future__ import annotations

from openapi_spec_validator import validate

from ig3.api.openapi import HEADER_PARAMETERS, QUERY_PARAMETERS, REQUEST_BODIES, build_openapi
from ig3.topology import TOPOLOGY


def test_document_is_valid_openapi_with_every_route():
    doc = build_openapi()
    validate(doc)
    listed = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert listed == {(r.method, r.path) for r in TOPOLOGY.routes}


def test_no_stale_entries_and_auth_follows_the_topology():
    routes = {(r.method, r.path): r for r in TOPOLOGY.routes}
    for table in (REQUEST_BODIES, QUERY_PARAMETERS, HEADER_PARAMETERS):
        assert set(table) <= set(routes), set(table) - set(routes)
    doc = build_openapi()
    for (method, path), route in routes.items():
        op = doc["paths"][path][method.lower()]
        assert bool(op["security"]) == (route.auth != "none"), (method, path)
        assert [p["name"] for p in op["parameters"] if p["in"] == "path"] == \
            [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]


def test_request_bodies_are_the_models_the_handlers_validate():
    from ig3.llm.models import ChatCompletionRequest
    from ig3.tasks.model import TaskSpec

    schemas = build_openapi()["components"]["schemas"]
    assert schemas["TaskSpec"]["required"] == TaskSpec.model_json_schema()["required"]
    assert set(schemas["ChatCompletionRequest"]["properties"]) == set(ChatCompletionRequest.model_fields)
