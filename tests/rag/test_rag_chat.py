"""Retrieval-augmented chat through the real LLM gateway (uvicorn) with the official openai SDK:
``extra_body={"rag": ...}`` retrieves from the caller's own collection (real MiniLM embeddings,
Qdrant local mode, registry in moto), the cited context reaches the upstream model, and the
sources come back in the response (``model_extra["rag"]``) and the ``x-ig3-rag-sources`` header."""

from __future__ import annotations


import openai
import orjson
import pytest

from ig3.rag.models import AddDocuments, CreateCollection
from tests.conftest import free_port
from tests.llm.conftest import UvicornServer, api_keys, mock_upstream  # noqa: F401 — fixtures

from .conftest import make_store
from .test_collections_api import CORPUS

pytestmark = pytest.mark.integration


@pytest.fixture
def rag_gateway(mock_upstream, api_keys, aws_env, redis_url, redis_prefix, minilm, qdrant_path, rag_bucket):  # noqa: F811
    from ig3.config import table_name
    from ig3.events import MemoryEventPublisher
    from ig3.llm.asgi import LlmApp
    from ig3.llm.config import parse_config
    from ig3.llm.edge import StaticCatalogue
    from ig3.llm.gateway import Gateway, Limits
    from ig3.llm.redisguard import RedisGuard
    from ig3.llm.usage import UsageRecorder
    from ig3.llm.wiring import AuthCache
    from ig3.rag.chat import ChatRetriever
    from ig3.rag.registry import DynamoRegistry
    from ig3.rag.service import CollectionsService

    mock, upstream = mock_upstream
    authorizer, new_key = api_keys
    svc = CollectionsService(
        DynamoRegistry(table_name("rag_collections")),
        {"qdrant": make_store("qdrant", qdrant_path, rag_bucket)},
        minilm,
        MemoryEventPublisher(),
    )
    config = {
        "model_list": [
            {
                "model_name": "cloud-small",
                "litellm_params": {
                    "model": "openai/mock-model",
                    "api_base": upstream,
                    "api_key": "sk-upstream",
                },
            }
        ]
    }

    async def factory():
        redis = RedisGuard(redis_url, timeout_s=0.5)
        usage = UsageRecorder(MemoryEventPublisher(), interval_s=0.1)
        gw = Gateway(
            config=parse_config(config),
            authorize=AuthCache(authorizer.authorize),
            redis=redis,
            catalogue=StaticCatalogue(),
            usage=usage,
            key_prefix=redis_prefix + "llm:",
            limits=Limits(key_rpm=1000, key_tpm=1_000_000, wallet_rpm=1000, wallet_tpm=1_000_000),
            rag=ChatRetriever(lambda: svc),
        )
        return gw, [usage.close, redis.close, gw.upstreams.close]

    with UvicornServer(LlmApp(factory, freeze_gc=False), free_port()) as server:
        yield server, mock, new_key, svc


def test_chat_with_rag_injects_cited_context_and_returns_sources(rag_gateway):
    server, mock, new_key, svc = rag_gateway
    key, owner = new_key()
    svc.create(owner, CreateCollection(name="kb", embedding_model="all-MiniLM-L6-v2", dimension=384))
    svc.add_documents(
        owner,
        "kb",
        AddDocuments.model_validate(
            {"documents": [{"id": k, "text": v, "metadata": {"topic": k}} for k, v in CORPUS.items()]}
        ),
    )
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30)

    question = "Why does the sea level go up and down twice a day?"
    raw = client.chat.completions.with_raw_response.create(
        model="cloud-small",
        max_tokens=20,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": question}],
        extra_body={"rag": {"collection": "kb", "top_k": 2}},
    )
    chat = raw.parse()
    rag = chat.model_extra["rag"]
    assert rag["collection"] == "kb" and len(rag["sources"]) == 2
    top = rag["sources"][0]
    assert top["index"] == 1 and top["document"] == "tides" and top["text"] == CORPUS["tides"]
    assert top["metadata"] == {"topic": "tides"} and top["score"] > rag["sources"][1]["score"]
    header = orjson.loads(raw.headers["x-ig3-rag-sources"])
    assert [h["id"] for h in header] == [s["id"] for s in rag["sources"]]
    # what reached the model: its own system prompt, then the numbered context, then the question
    sent = mock.last_body["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "user"]
    assert sent[0]["content"] == "You are terse." and sent[2]["content"] == question
    assert f"[1] (document tides) {CORPUS['tides']}" in sent[1]["content"] and "[2]" in sent[1]["content"]
    assert chat.usage.prompt_tokens > len(question.split()) + 40  # the context was counted (and billed)

    # streamed: the sources ride in the header, the stream itself is untouched
    with client.chat.completions.with_streaming_response.create(
        model="cloud-small",
        max_tokens=5,
        stream=True,
        messages=[{"role": "user", "content": question}],
        extra_body={"rag": {"collection": "kb", "top_k": 1}},
    ) as resp:
        assert [h["id"] for h in orjson.loads(resp.headers["x-ig3-rag-sources"])] == ["tides#0"]
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text
    assert "(document tides)" in mock.last_body["messages"][0]["content"]

    # a threshold nothing passes: no context message, empty sources
    chat = client.chat.completions.create(
        model="cloud-small",
        max_tokens=5,
        messages=[{"role": "user", "content": question}],
        extra_body={"rag": {"collection": "kb", "score_threshold": 0.99}},
    )
    assert chat.model_extra["rag"]["sources"] == [] and [m["role"] for m in mock.last_body["messages"]] == [
        "user"
    ]


def test_chat_rag_is_owner_only_and_validated(rag_gateway):
    server, _, new_key, svc = rag_gateway
    key_a, alice = new_key()
    key_m, _ = new_key()
    svc.create(alice, CreateCollection(name="secret", embedding_model="all-MiniLM-L6-v2", dimension=384))
    svc.add_documents(
        alice, "secret", AddDocuments.model_validate({"documents": [{"text": "the vault code is 4711"}]})
    )
    mallory = openai.OpenAI(base_url=server.base_url, api_key=key_m, max_retries=0, timeout=30)
    with pytest.raises(openai.NotFoundError) as err:
        mallory.chat.completions.create(
            model="cloud-small",
            messages=[{"role": "user", "content": "vault code?"}],
            extra_body={"rag": {"collection": "secret"}},
        )
    assert err.value.body["code"] == "collection_not_found"
    alice_client = openai.OpenAI(base_url=server.base_url, api_key=key_a, max_retries=0, timeout=30)
    for rag, code in [
        ({"collection": "secret", "top_k": 0}, "invalid_request"),
        ({"top_k": 2}, "invalid_request"),
        ("secret", "invalid_request"),
        ({"collection": "secret", "surprise": 1}, "invalid_request"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            alice_client.chat.completions.create(
                model="cloud-small", messages=[{"role": "user", "content": "hi"}], extra_body={"rag": rag}
            )
        assert err.value.body["code"] == code, rag
    chat = alice_client.chat.completions.create(
        model="cloud-small",
        max_tokens=5,
        messages=[{"role": "user", "content": "what is the vault code?"}],
        extra_body={"rag": {"collection": "secret"}},
    )
    assert "4711" in chat.model_extra["rag"]["sources"][0]["text"]
