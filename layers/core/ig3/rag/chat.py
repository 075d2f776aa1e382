"""Retrieval-augmented chat: the ``rag`` extension field of ``/v1/chat/completions``.

``client.chat.completions.create(..., extra_body={"rag": {"collection": "kb", "top_k": 4}})``:
the gateway takes the last user message as the query, retrieves from the caller's own collection
(the same ownership rule as the collections API: another wallet's collection is "not found"),
inserts one system message with the numbered passages after the conversation's own system
messages, and sends the rest of the request on unchanged (routing, limits, billing as usual).

The sources come back as a ``rag`` field of the completion object (the openai SDK keeps unknown
fields: ``completion.model_extra["rag"]``) and, for streams, whose body is already flowing, in the
``x-ig3-rag-sources`` header (index, chunk id, score) — also present on non-streamed replies.
No passage good enough (score threshold) means no context message and an empty sources list.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

import orjson
from pydantic import ValidationError

from ig3.errors import BadRequest, validation_message
from ig3.rag.context import DEFAULT_CONTEXT_CHARS, build_context
from ig3.rag.models import ChatRag, Query

MAX_QUERY_CHARS = 8000


class ChatRetriever:
    """Runs the collections service's (blocking) search off the event loop."""

    def __init__(self, service: Callable[[], Any], *, max_context_chars: int = DEFAULT_CONTEXT_CHARS):
        self._service = service  # () -> CollectionsService, built on first use
        self.max_context_chars = max_context_chars

    async def retrieve(self, principal: Any, spec: ChatRag, query: str) -> tuple[str, list[dict[str, Any]]]:
        q = Query(
            query=query[-MAX_QUERY_CHARS:],
            top_k=spec.top_k,
            score_threshold=spec.score_threshold,
            filter=spec.filter,
        )
        hits = await asyncio.to_thread(
            self._service().search,
            principal.subject,
            spec.collection,
            q,
            key_id=getattr(principal, "key_id", None),
        )
        return build_context(hits, max_chars=self.max_context_chars)


@dataclass
class RagResult:
    collection: str
    sources: list[dict[str, Any]]

    def header(self) -> str:
        return orjson.dumps(
            [{"index": s["index"], "id": s["id"], "score": round(s["score"], 4)} for s in self.sources]
        ).decode()

    def attach(self, reply: Any) -> None:
        reply.headers["x-ig3-rag-sources"] = self.header()
        if reply.body is not None:
            obj = orjson.loads(reply.body)
            obj["rag"] = {"collection": self.collection, "sources": self.sources}
            reply.body = orjson.dumps(obj)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


async def apply_rag(
    retriever: ChatRetriever | None, principal: Any, body: dict[str, Any]
) -> tuple[dict[str, Any], RagResult]:
    """The request body with the context message inserted, and the sources to return."""
    if retriever is None:
        raise BadRequest("retrieval-augmented chat is not enabled on this gateway", code="rag_unavailable")
    body = dict(body)
    raw = body.pop("rag")
    if not isinstance(raw, dict):
        raise BadRequest(
            'rag must be an object like {"collection": "kb", "top_k": 4}', code="invalid_request"
        )
    try:
        spec = ChatRag.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest("rag: " + validation_message(exc), code="invalid_request") from None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: a non-empty list is required", code="invalid_request")
    query = next(
        (
            _text(m.get("content"))
            for m in reversed(messages)
            if isinstance(m, dict) and m.get("role") == "user"
        ),
        "",
    ).strip()
    if not query:
        raise BadRequest("rag needs a user message with text to search for", code="invalid_request")
    context, sources = await retriever.retrieve(principal, spec, query)
    if context:
        lead = 0
        while (
            lead < len(messages)
            and isinstance(messages[lead], dict)
            and messages[lead].get("role") in ("system", "developer")
        ):
            lead += 1
        body["messages"] = messages[:lead] + [{"role": "system", "content": context}] + messages[lead:]
    return body, RagResult(spec.collection, sources)
