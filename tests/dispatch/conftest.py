"""Fixtures for the dispatch tests: a real local SageMaker endpoint on a tiny llama.cpp model and
the dispatch harness (real handlers on moto server + real Redis + the real scheduler)."""

from __future__ import annotations

import pytest

from ig3.config import DispatchSettings


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    from ig3_edge.tinymodel import write_tiny_gguf

    d = tmp_path_factory.mktemp("models")
    write_tiny_gguf(d / "tiny-llama.gguf", name="tiny-llama")
    return d


@pytest.fixture(scope="session")
def sagemaker(models_dir):
    from ig3.local.sagemaker import LocalSageMakerEndpoint

    endpoint = LocalSageMakerEndpoint(models_dir, endpoint="ig3-test-fallback", region="us-east-1")
    # LiteLLM's first import counts against a cloud attempt's deadline (seconds; close to a minute on
    # a loaded box): import it once here so the scenarios test dispatch, not the machine's load.
    from ig3.tasks.cloud import _litellm

    _litellm()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def harness(aws_env, redis_url, redis_prefix, sagemaker, monkeypatch):
    """The dispatch path wired from the environment (``ig3.tasks.wiring``) with this test's own
    Redis prefix, the local SageMaker fallback, and fast retries."""
    from ig3 import redis_client
    from ig3.tasks import wiring
    from ig3.tasks.cloud import SAGEMAKER_MODELS_ENV, SAGEMAKER_RUNTIME_URL_ENV
    from ig3.topology import SAGEMAKER_ENDPOINT_ENV
    from tests.dispatch.harness import Harness

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv(wiring.LIVE_PREFIX_ENV, redis_prefix)
    monkeypatch.setenv(SAGEMAKER_ENDPOINT_ENV, sagemaker.endpoint)
    monkeypatch.setenv(SAGEMAKER_MODELS_ENV, ",".join(sagemaker.models))
    monkeypatch.setenv(SAGEMAKER_RUNTIME_URL_ENV, sagemaker.url)
    env = _own_queues(aws_env, monkeypatch)
    redis_client.reset()
    _clear_cached_wiring()
    h = Harness(env)
    h.svc.settings = DispatchSettings(
        edge_attempts=3, cloud_attempts=1, default_deadline_s=30, backoff_base_s=0.05, backoff_max_s=0.1
    )
    yield h
    _clear_cached_wiring()


def _clear_cached_wiring():
    """The wiring caches one service per process (as in Lambda); each test has its own Redis prefix,
    so every cache that captured a prefix goes — the reputation store included, or one test's
    quarantines and signature failures would steer the next test's placements."""
    from ig3.audit import wiring as audit_wiring
    from ig3.tasks import wiring

    for cached in (wiring.task_service, wiring.live_state, audit_wiring.reputation_store,
                   audit_wiring.audit_service):
        cached.cache_clear()


def _own_queues(env, monkeypatch):
    """Fresh queues for one test. The session's moto queues are shared by every test: messages
    other tests left behind (a dispatch re-sent with a delay, a timeout armed for a deadline still
    ahead) would reach this test's functions, take its devices' slots and send its own tasks to
    the cloud. (PurgeQueue is limited to once a minute, and moto enforces it.)"""
    import uuid

    import boto3

    from ig3.topology import TOPOLOGY, queue_env

    sqs = boto3.client("sqs", region_name="us-east-1")
    tag = uuid.uuid4().hex[:8]
    own = dict(env)
    for q in TOPOLOGY.queues:
        url = sqs.create_queue(QueueName=f"t{tag}-{q.name}")["QueueUrl"]
        own[queue_env(q.name)] = url
        monkeypatch.setenv(queue_env(q.name), url)
    return own
