"""Documents -> overlapping chunks of words (pure).

Why words, not model tokens: the splitter must not need the embedding model's tokenizer (the
model runs on a device, not here). A window of ``size`` words with ``overlap`` words shared with
the previous window keeps a sentence that straddles a boundary whole in at least one chunk.
English averages ~1.3 word pieces per word, so the default 180 words stays under MiniLM-class
models' 256-piece limit. Offsets are character positions in the original text, so a citation
can point at the exact span.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_CHUNK_WORDS = 180
DEFAULT_OVERLAP_WORDS = 30
MAX_CHUNK_WORDS = 2000

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start: int  # character offset in the document
    end: int


def chunk_text(
    text: str, size: int = DEFAULT_CHUNK_WORDS, overlap: int = DEFAULT_OVERLAP_WORDS
) -> list[Chunk]:
    """Split ``text`` into windows of ``size`` words, consecutive windows sharing ``overlap`` words."""
    if size < 1 or size > MAX_CHUNK_WORDS:
        raise ValueError(f"chunk size must be 1-{MAX_CHUNK_WORDS} words")
    if overlap < 0 or overlap >= size:
        raise ValueError("chunk overlap must be at least 0 and smaller than the chunk size")
    spans = [m.span() for m in _WORD.finditer(text)]
    if not spans:
        return []
    chunks: list[Chunk] = []
    step = size - overlap
    first = 0
    while True:
        window = spans[first : first + size]
        start, end = window[0][0], window[-1][1]
        chunks.append(Chunk(len(chunks), text[start:end], start, end))
        if first + size >= len(spans):
            return chunks
        first += step
