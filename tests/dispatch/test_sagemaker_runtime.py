"""The local SageMaker runtime against the two clients that must accept it: boto3's
``sagemaker-runtime`` (the service model's own parsers, event-stream decoding included) and
LiteLLM's ``sagemaker_chat`` provider through ``ig3.tasks.cloud.SageMakerChatBackend`` — on a real
tiny llama.cpp model."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.exceptions import ClientError, EventStreamError

from ig3.iot import MemoryIotPublisher
from ig3.tasks.cloud import CloudUnsupported, SageMakerChatBackend, backend_from_env
from ig3.tasks.model import Task
from ig3.wire import ChatMessage, TaskInput, TaskLimits

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
CHAT = {
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
    "max_tokens": 10,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def runtime(sagemaker):
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=sagemaker.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def sse_records(parts: list[bytes]) -> list[dict]:
    text = b"".join(parts).decode()
    return [
        json.loads(line[len("data: ") :])
        for line in text.split("\n")
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def test_invoke_endpoint_returns_the_containers_chat_completion(runtime, sagemaker):
    resp = runtime.invoke_endpoint(
        EndpointName=sagemaker.endpoint,
        Body=json.dumps(CHAT),
        ContentType="application/json",
        Accept="application/json",
    )
    assert resp["ContentType"] == "application/json" and resp["InvokedProductionVariant"] == "AllTraffic"
    body = json.loads(resp["Body"].read())
    assert body["object"] == "chat.completion" and body["model"] == "tiny-llama"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= 10 and usage["prompt_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_response_stream_is_an_event_stream_of_the_same_generation(runtime, sagemaker):
    whole = json.loads(
        runtime.invoke_endpoint(
            EndpointName=sagemaker.endpoint, Body=json.dumps(CHAT), ContentType="application/json"
        )["Body"].read()
    )
    resp = runtime.invoke_endpoint_with_response_stream(
        EndpointName=sagemaker.endpoint, Body=json.dumps(CHAT), ContentType="application/json"
    )
    assert resp["ContentType"] == "text/event-stream"
    events = list(resp["Body"])
    assert events and all(set(e) == {"PayloadPart"} for e in events)
    records = sse_records([e["PayloadPart"]["Bytes"] for e in events])
    assert all(r["object"] == "chat.completion.chunk" for r in records)
    assert records[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # Greedy decoding: token by token, the stream says exactly what the plain call said.
    streamed = "".join(r["choices"][0]["delta"].get("content") or "" for r in records)
    assert streamed == whole["choices"][0]["message"]["content"]
    assert records[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert records[-1]["usage"] == whole["usage"]


def test_runtime_errors_have_the_services_shapes(runtime, sagemaker):
    with pytest.raises(ClientError) as missing:
        runtime.invoke_endpoint(
            EndpointName="no-such-endpoint", Body=json.dumps(CHAT), ContentType="application/json"
        )
    assert missing.value.response["Error"]["Code"] == "ValidationError"
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    bad = {"messages": [{"role": "wizard", "content": "x"}]}
    with pytest.raises(ClientError) as model_error:
        runtime.invoke_endpoint(
            EndpointName=sagemaker.endpoint, Body=json.dumps(bad), ContentType="application/json"
        )
    err = model_error.value.response
    assert err["Error"]["Code"] == "ModelError" and err["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert err["OriginalStatusCode"] == 400 and "role" in err["OriginalMessage"]

    other_model = {**CHAT, "model": "llama-70b"}
    with pytest.raises(ClientError) as not_served:
        runtime.invoke_endpoint(
            EndpointName=sagemaker.endpoint, Body=json.dumps(other_model), ContentType="application/json"
        )
    assert not_served.value.response["OriginalStatusCode"] == 404


def test_a_failure_after_the_stream_started_is_a_model_stream_error(runtime, sagemaker):
    # Longer than the model's context: the container fails after the response headers went out.
    huge = {"messages": [{"role": "user", "content": "word " * 6000}], "max_tokens": 4}
    resp = runtime.invoke_endpoint_with_response_stream(
        EndpointName=sagemaker.endpoint, Body=json.dumps(huge), ContentType="application/json"
    )
    with pytest.raises(EventStreamError) as exc:
        list(resp["Body"])
    assert exc.value.response["Error"]["Code"] == "ModelStreamError"
    assert "context_length_exceeded" in exc.value.response["Error"]["Message"]


def test_unsigned_or_wrongly_scoped_requests_are_refused(sagemaker):
    url = f"{sagemaker.url}/endpoints/{sagemaker.endpoint}/invocations"
    req = urllib.request.Request(
        url, data=json.dumps(CHAT).encode(), headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(req, timeout=10)
    assert unsigned.value.code == 403
    assert unsigned.value.headers["x-amzn-ErrorType"].startswith("MissingAuthenticationTokenException")
    wrong = boto3.client(
        "sagemaker-runtime",
        endpoint_url=sagemaker.url,
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with pytest.raises(ClientError) as scoped:
        wrong.invoke_endpoint(
            EndpointName=sagemaker.endpoint, Body=json.dumps(CHAT), ContentType="application/json"
        )
    assert scoped.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def _task(stream: bool, **limits) -> Task:
    return Task(
        task_id="tsk_0123456789abcdef",
        kind="chat",
        model="tiny-llama",
        stream=stream,
        attempt=4,
        input=TaskInput(
            messages=[
                ChatMessage(role="system", content="be brief"),
                ChatMessage(role="user", content="hello there"),
            ]
        ),
        limits=TaskLimits(max_tokens=10, temperature=0, **limits),
        created_at=0,
        updated_at=0,
        deadline=time.time() + 30,
    )


def test_litellm_sagemaker_chat_backend_plain_and_streamed(runtime, sagemaker):
    whole = json.loads(
        runtime.invoke_endpoint(
            EndpointName=sagemaker.endpoint, Body=json.dumps(CHAT), ContentType="application/json"
        )["Body"].read()
    )
    topic_sink = MemoryIotPublisher()
    backend = SageMakerChatBackend(
        sagemaker.endpoint,
        {"tiny-llama"},
        region="us-east-1",
        runtime_url=sagemaker.url,
        stream_publisher=topic_sink,
    )
    before = sagemaker.invocations
    out, usage = backend.run(_task(stream=False))
    assert out.text == whole["choices"][0]["message"]["content"]  # same limits reached the container
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        whole["usage"]["prompt_tokens"],
        whole["usage"]["completion_tokens"],
    )
    sent = sagemaker.recent_requests[-1]
    # What LiteLLM's sagemaker_chat sent: the served model in the body, no "stream" key (the path says it).
    assert sent["op"] == "invocations" and sent["model"] == "tiny-llama" and "stream" not in sent["keys"]
    assert {"messages", "max_tokens", "temperature"} <= set(sent["keys"])

    out2, usage2 = backend.run(_task(stream=True))
    assert sagemaker.recent_requests[-1]["op"] == "invocations-response-stream"
    assert out2.text == out.text and usage2.completion_tokens == usage.completion_tokens
    assert usage2.ttft_ms is not None and usage2.ttft_ms <= usage2.duration_ms
    chunks = [json.loads(p) for t, p in topic_sink.sent]
    assert {t for t, _ in topic_sink.sent} == {"ig3/v1/tasks/tsk_0123456789abcdef/stream"}
    assert chunks[-1]["final"] and chunks[-1]["usage"]["completion_tokens"] == usage.completion_tokens
    assert "".join(c["delta"] for c in chunks) == out.text and all(c["attempt"] == 4 for c in chunks)
    after = sagemaker.invocations
    assert after["invocations"] == before["invocations"] + 1
    assert after["invocations-response-stream"] == before["invocations-response-stream"] + 1


def test_backend_failures_raise_and_unsupported_kinds_are_refused(sagemaker):
    missing = SageMakerChatBackend(
        "not-deployed", {"tiny-llama"}, region="us-east-1", runtime_url=sagemaker.url
    )
    with pytest.raises(Exception) as exc:
        missing.run(_task(stream=False))
    assert "not found" in str(exc.value)
    backend = SageMakerChatBackend(
        sagemaker.endpoint, {"tiny-llama"}, region="us-east-1", runtime_url=sagemaker.url
    )
    completion = _task(stream=False).model_copy(
        update={"kind": "completion", "input": TaskInput(prompt="once upon a time")}
    )
    with pytest.raises(CloudUnsupported):
        backend.run(completion)


def test_backend_configuration_from_the_environment():
    assert backend_from_env({}) is None
    assert backend_from_env({"IG3_SAGEMAKER_ENDPOINT": "ep"}) is None  # no served models: no fallback
    b = backend_from_env(
        {
            "IG3_SAGEMAKER_ENDPOINT": "ig3-prod-fallback",
            "IG3_SAGEMAKER_MODELS": "a, b",
            "AWS_REGION": "eu-west-1",
        }
    )
    assert b.models == {"a", "b"} and b.serves("a") and not b.serves("c") and b.region == "eu-west-1"
    assert (
        b.operation_url(False)
        == "https://runtime.sagemaker.eu-west-1.amazonaws.com/endpoints/ig3-prod-fallback/invocations"
    )
    assert b.operation_url(True).endswith("/endpoints/ig3-prod-fallback/invocations-response-stream")
    local = backend_from_env(
        {
            "IG3_SAGEMAKER_ENDPOINT": "e",
            "IG3_SAGEMAKER_MODELS": "a",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": "http://127.0.0.1:9/",
        }
    )
    assert local.operation_url(False) == "http://127.0.0.1:9/endpoints/e/invocations"
