"""Retrieved chunks -> one cited context message for the model, and the sources for the client.

The context goes in a system message placed before the conversation, each chunk numbered
``[n]`` so the model can cite it; the same numbers index the ``sources`` list returned with the
response, so a client can show exactly which passages backed the answer. Chunks are cut to a
character budget (small edge models have small context windows) in rank order.
"""

from __future__ import annotations

from typing import Any

from ig3.rag.stores import Hit

DEFAULT_CONTEXT_CHARS = 6000
INSTRUCTIONS = (
    "Answer using the numbered sources below when they are relevant, and cite them like [1]. "
    "If the sources do not contain the answer, say so."
)


def source_view(index: int, hit: Hit) -> dict[str, Any]:
    p = hit.payload
    return {
        "index": index,
        "id": hit.id,
        "document": p.get("doc"),
        "chunk": p.get("chunk"),
        "score": hit.score,
        "text": p.get("text", ""),
        "metadata": p.get("m") or {},
    }


def build_context(
    hits: list[Hit], *, max_chars: int = DEFAULT_CONTEXT_CHARS
) -> tuple[str, list[dict[str, Any]]]:
    """(system message text, sources). No hits: an empty string and no sources."""
    parts: list[str] = []
    sources: list[dict[str, Any]] = []
    used = 0
    for hit in hits:
        text = str(hit.payload.get("text", "")).strip()
        room = max_chars - used
        if room <= 0:
            break
        if len(text) > room:
            text = text[:room].rstrip() + " ..."
        n = len(sources) + 1
        parts.append(f"[{n}] (document {hit.payload.get('doc')}) {text}")
        used += len(text)
        sources.append(source_view(n, hit))
    if not sources:
        return "", []
    return INSTRUCTIONS + "\n\n" + "\n\n".join(parts), sources
