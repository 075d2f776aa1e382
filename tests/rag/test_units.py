"""Pure units: chunking (property-tested), the context builder, the chat body rewrite, the
task-path embedder's batching and failure mapping (against an in-memory TaskService stand-in)."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ig3.errors import BadRequest, Unavailable
from ig3.rag.chat import apply_rag
from ig3.rag.chunking import chunk_text
from ig3.rag.context import build_context
from ig3.rag.embedders import EmbeddingFailed, TaskEmbedder
from ig3.rag.stores import Hit
from ig3.tasks.model import MAX_INPUT_CHARS, Task, TaskStatus
from ig3.wire import ResultError, TaskOutput, Usage

words = st.lists(st.text(alphabet="abcdefghij", min_size=1, max_size=6), min_size=0, max_size=300)


@settings(max_examples=150, deadline=None)
@given(
    words=words,
    size=st.integers(1, 40),
    overlap_frac=st.floats(0, 0.95),
    sep=st.sampled_from([" ", "\n", "  \t"]),
)
def test_chunks_cover_every_word_with_the_declared_overlap(words, size, overlap_frac, sep):
    overlap = min(int(size * overlap_frac), size - 1)
    text = sep.join(words)
    chunks = chunk_text(text, size, overlap)
    if not words:
        assert chunks == []
        return
    got = [c.text.split() for c in chunks]
    assert all(1 <= len(g) <= size for g in got)
    assert all(text[c.start : c.end] == c.text for c in chunks)  # offsets point into the original
    step = size - overlap
    rebuilt = list(got[0])
    for prev, cur in zip(got, got[1:]):
        assert cur[:overlap] == prev[step : step + overlap]  # consecutive windows share `overlap` words
        rebuilt += cur[len(prev) - step :]
    assert rebuilt == words  # nothing lost, nothing duplicated beyond the overlap
    assert len(got[-1]) > overlap or len(chunks) == 1  # no chunk made only of the previous one's tail


def test_chunk_arguments_are_checked():
    with pytest.raises(ValueError):
        chunk_text("a b", 5, 5)
    with pytest.raises(ValueError):
        chunk_text("a b", 0, 0)


def _hit(i, text, score=0.9):
    return Hit(f"d{i}#0", score, {"doc": f"d{i}", "chunk": 0, "text": text, "m": {"k": i}})


def test_context_numbers_sources_and_keeps_to_the_budget():
    ctx, sources = build_context(
        [_hit(1, "alpha " * 10), _hit(2, "beta " * 100), _hit(3, "gamma")], max_chars=200
    )
    assert "[1] (document d1) alpha" in ctx and "[2] (document d2) beta" in ctx and "[3]" not in ctx
    assert [s["index"] for s in sources] == [1, 2] and sources[1]["metadata"] == {"k": 2}
    assert build_context([]) == ("", [])


def test_apply_rag_rewrites_only_the_message_list():
    class Retriever:
        async def retrieve(self, principal, spec, query):
            self.seen = (principal, spec.collection, spec.top_k, query)
            return build_context([_hit(1, "passage")])

    r = Retriever()
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "x"},
            {"role": "user", "content": [{"type": "text", "text": "last question"}]},
        ],
        "rag": {"collection": "kb", "top_k": 3},
        "temperature": 0,
    }
    out, result = asyncio.run(apply_rag(r, "p", body))
    assert r.seen == ("p", "kb", 3, "last question") and "rag" not in out and "rag" in body
    assert [m["role"] for m in out["messages"]] == ["system", "system", "user", "assistant", "user"]
    assert out["messages"][1]["content"].endswith("[1] (document d1) passage") and out["temperature"] == 0
    assert result.collection == "kb" and result.sources[0]["id"] == "d1#0"
    with pytest.raises(BadRequest) as e:
        asyncio.run(apply_rag(None, "p", body))
    assert e.value.code == "rag_unavailable"
    with pytest.raises(BadRequest):
        asyncio.run(apply_rag(r, "p", {**body, "messages": [{"role": "system", "content": "only system"}]}))


class FakeTasks:
    """Stands in for the TaskService: each submitted embedding task is computed by ``device``."""

    def __init__(self, device, status=TaskStatus.COMPLETED, terminal_at_submit=False):
        self.device, self.status, self.terminal_at_submit = device, status, terminal_at_submit
        self.tasks: dict[str, Task] = {}
        self.submitted = []

    def submit(self, spec, *, account, key_id=None, **_):
        tid = f"t{len(self.tasks)}"
        self.submitted.append((spec, account, key_id))
        t = Task(
            task_id=tid,
            kind=spec.kind,
            model=spec.model,
            input=spec.input,
            account=account,
            created_at=time.time(),
            updated_at=time.time(),
        )
        self.tasks[tid] = t
        return self._finish(t) if self.terminal_at_submit else t

    def _finish(self, t):
        if self.status == TaskStatus.COMPLETED:
            texts = t.input.texts
            return t.model_copy(
                update={
                    "status": TaskStatus.COMPLETED,
                    "output": TaskOutput(embeddings=self.device(texts)),
                    "usage": Usage(prompt_tokens=sum(len(x.split()) for x in texts)),
                }
            )
        return t.model_copy(
            update={"status": self.status, "error": ResultError(code="model_not_found", message="x")}
        )

    def wait(self, task_id, seconds):
        return self._finish(self.tasks[task_id]) if self.status is not None else None


def test_task_embedder_batches_and_keeps_order():
    fake = FakeTasks(lambda texts: [[float(len(t)), 1.0] for t in texts])
    emb = TaskEmbedder(fake, fake.wait, max_items=3)
    texts = [f"text number {i} " + "x" * i for i in range(8)]
    out = emb.embed("embed-model", texts, account="0xabc", key_id="k1")
    assert (
        out.vectors == [[float(len(t)), 1.0] for t in texts]
        and out.metered
        and out.tokens == sum(len(t.split()) for t in texts)
    )
    assert [len(s.input.texts) for s, _, _ in fake.submitted] == [3, 3, 2]
    assert all(
        s.kind == "embedding" and s.model == "embed-model" and a == "0xabc" and k == "k1"
        for s, a, k in fake.submitted
    )
    assert out.task_ids == ("t0", "t1", "t2")
    # packing by size too: two texts that together exceed one task's input limit go in two tasks
    big = FakeTasks(lambda texts: [[0.0]] * len(texts))
    TaskEmbedder(big, big.wait).embed("m", ["a" * (MAX_INPUT_CHARS - 10), "b" * 20], account="0xabc")
    assert [len(s.input.texts) for s, _, _ in big.submitted] == [1, 1]


def test_task_embedder_failures_are_clear():
    failed = FakeTasks(None, status=TaskStatus.FAILED)
    with pytest.raises(EmbeddingFailed) as e:
        TaskEmbedder(failed, failed.wait).embed("m", ["x"], account="0xabc")
    assert e.value.status == 502 and "model_not_found" in e.value.message
    stuck = FakeTasks(None, status=None)
    with pytest.raises(Unavailable):
        TaskEmbedder(stuck, stuck.wait, timeout_s=0.01).embed("m", ["x"], account="0xabc")
    with pytest.raises(BadRequest):
        TaskEmbedder(stuck, stuck.wait).embed("m", ["x" * (MAX_INPUT_CHARS + 1)], account="0xabc")
    wrong = FakeTasks(lambda texts: [[1.0]])  # a device that answers one vector for two texts
    with pytest.raises(EmbeddingFailed):
        TaskEmbedder(wrong, wrong.wait).embed("m", ["a", "b"], account="0xabc")
