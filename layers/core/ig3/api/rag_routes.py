"""RAG collections: ``/v1/collections...`` (the caller's wallet owns what it creates)."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from ig3.api.http import current_principal, json_response, parse_body
from ig3.rag.context import source_view
from ig3.rag.models import AddDocuments, CreateCollection, DeleteDocuments, Query

router = APIGatewayRouter()


def _service():
    from ig3.rag.wiring import collections_service

    return collections_service()


@router.post("/v1/collections")
def create_collection():
    principal = current_principal(router)
    spec = parse_body(router, CreateCollection)
    rec = _service().create(principal.subject, spec)
    return json_response(201, rec.public_view(), headers={"location": f"/v1/collections/{rec.name}"})


@router.get("/v1/collections")
def list_collections():
    principal = current_principal(router)
    return json_response(
        200, {"object": "list", "data": [r.public_view() for r in _service().list(principal.subject)]}
    )


@router.get("/v1/collections/<name>")
def get_collection(name: str):
    principal = current_principal(router)
    return json_response(200, _service().get(principal.subject, name).public_view())


@router.delete("/v1/collections/<name>")
def delete_collection(name: str):
    principal = current_principal(router)
    rec = _service().delete(principal.subject, name)
    return json_response(200, {"object": "collection.deleted", "name": rec.name, "deleted": True})


@router.post("/v1/collections/<name>/documents")
def add_documents(name: str):
    principal = current_principal(router)
    req = parse_body(router, AddDocuments)
    result = _service().add_documents(principal.subject, name, req, key_id=principal.key_id)
    if result["object"] == "collection.ingestion_job":
        # Too large to ingest within the request: accepted as a job; poll its status route.
        return json_response(202, result, headers={"location": f"/v1/collections/{name}/jobs/{result['id']}"})
    return json_response(200, result)


@router.get("/v1/collections/<name>/jobs/<job_id>")
def get_ingestion_job(name: str, job_id: str):
    principal = current_principal(router)
    return json_response(200, _service().get_job(principal.subject, name, job_id).public_view())


@router.post("/v1/collections/<name>/documents/delete")
def delete_documents(name: str):
    principal = current_principal(router)
    req = parse_body(router, DeleteDocuments)
    return json_response(200, _service().delete_documents(principal.subject, name, req))


@router.post("/v1/collections/<name>/query")
def query_collection(name: str):
    principal = current_principal(router)
    q = parse_body(router, Query)
    hits = _service().search(principal.subject, name, q, key_id=principal.key_id)
    return json_response(
        200,
        {"object": "list", "collection": name, "data": [source_view(i, h) for i, h in enumerate(hits, 1)]},
    )
