"""Request bodies of the ``/v1/collections`` API and the chat ``rag`` extension (pure pydantic)."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from ig3.rag.chunking import DEFAULT_CHUNK_WORDS, DEFAULT_OVERLAP_WORDS, MAX_CHUNK_WORDS

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
DOC_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
META_KEY_PATTERN = r"^[A-Za-z0-9_]{1,64}$"
MAX_TEXT_CHARS = 100_000
MAX_DOCUMENTS = 256
MAX_TOP_K = 100

MetaValue = StrictStr | StrictBool | StrictInt | StrictFloat
MetaFilter = dict[str, MetaValue | list[MetaValue]]


def _check_meta_keys(keys, what: str) -> None:
    import re

    for k in keys:
        if not re.match(META_KEY_PATTERN, k):
            raise ValueError(f"{what} key {k!r} must be 1-64 of [A-Za-z0-9_]")


def _check_filter(flt: MetaFilter | None) -> None:
    if flt is None:
        return
    if len(flt) > 16:
        raise ValueError("filter takes at most 16 keys")
    _check_meta_keys(flt, "filter")
    for k, v in flt.items():
        if isinstance(v, list) and not 1 <= len(v) <= 100:
            raise ValueError(f"filter.{k}: give 1-100 values")


class CreateCollection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    embedding_model: str = Field(min_length=1, max_length=128)
    dimension: int = Field(ge=1, le=8192)
    distance: Literal["cosine", "dot", "euclid"] = "cosine"
    # None: the gateway's default store (what it has configured; ig3.rag.service).
    store: Literal["qdrant", "faiss"] | None = None
    chunk_size: int = Field(default=DEFAULT_CHUNK_WORDS, ge=1, le=MAX_CHUNK_WORDS)
    chunk_overlap: int = Field(default=DEFAULT_OVERLAP_WORDS, ge=0)

    @model_validator(mode="after")
    def _overlap(self) -> CreateCollection:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        return self


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, pattern=DOC_ID_PATTERN)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    metadata: dict[str, MetaValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _meta(self) -> Document:
        if len(self.metadata) > 32:
            raise ValueError("metadata takes at most 32 keys")
        _check_meta_keys(self.metadata, "metadata")
        if not self.text.strip():
            raise ValueError("text must not be blank")
        return self


class AddDocuments(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[Document] = Field(min_length=1, max_length=MAX_DOCUMENTS)
    chunk_size: int | None = Field(default=None, ge=1, le=MAX_CHUNK_WORDS)
    chunk_overlap: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ids(self) -> AddDocuments:
        ids = [d.id for d in self.documents if d.id is not None]
        if len(ids) != len(set(ids)):
            raise ValueError("document ids must be unique within a request")
        return self


class DeleteDocuments(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    filter: MetaFilter | None = None

    @model_validator(mode="after")
    def _some(self) -> DeleteDocuments:
        if self.ids is None and not self.filter:
            raise ValueError("give ids, a filter, or both")
        _check_filter(self.filter)
        return self


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=8000)
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K)
    score_threshold: float | None = None
    filter: MetaFilter | None = None

    @model_validator(mode="after")
    def _flt(self) -> Query:
        _check_filter(self.filter)
        return self


class ChatRag(BaseModel):
    """``extra_body={"rag": {...}}`` on ``/v1/chat/completions``."""

    model_config = ConfigDict(extra="forbid")
    collection: str = Field(pattern=NAME_PATTERN)
    top_k: int = Field(default=4, ge=1, le=20)
    score_threshold: float | None = None
    filter: MetaFilter | None = None

    @model_validator(mode="after")
    def _flt(self) -> ChatRag:
        _check_filter(self.filter)
        return self
