"""The reference-model store on S3 (moto in server mode) with real GGUF files: publish (idempotent, with
metadata), fetch by hash, cache hits, corrupted objects rejected and never cached, LRU eviction within the
byte budget, concurrent fetches of one hash downloading it once — and the operator's ``ig3 models publish``."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import boto3
import pytest

from ig3.audit.models import CachedModelStore, ModelIntegrityError, file_sha256
from ig3.audit.s3models import S3ModelSource, publish
from ig3.errors import Unavailable


@pytest.fixture
def s3(moto_endpoint):
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3):
    name = f"ig3-models-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})  # as in AWS
    return name


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[Path]:
    """Three real (tiny, random-weight) llama GGUFs: same shape, different weights -> different hashes."""
    from ig3_edge.tinymodel import write_tiny_gguf

    root = tmp_path_factory.mktemp("tiny-models")
    return [write_tiny_gguf(root / f"tiny{i}.gguf", name=f"tiny-{i}", seed=10 + i) for i in range(3)]


def gets(s3) -> list[str]:
    """Counts GetObject calls the client really sends (a botocore event hook, no stub)."""
    calls: list[str] = []
    s3.meta.events.register("before-call.s3.GetObject", lambda params, **_: calls.append(params["url_path"]))
    return calls


def store(s3, bucket, cache_dir, *, max_bytes=2**30, events=None) -> CachedModelStore:
    return CachedModelStore(S3ModelSource(bucket, client=s3), cache_dir=cache_dir, max_bytes=max_bytes,
                            chunk_bytes=64 * 1024,
                            on_event=(lambda name, fields: events.append((name, fields))) if events is not None
                            else None)


def test_publish_is_idempotent_and_carries_the_models_metadata(s3, bucket, tiny):
    first = publish(tiny[0], bucket=bucket, client=s3)
    assert first.action == "uploaded"
    sha = file_sha256(tiny[0])
    assert first.key == f"models/{sha}.gguf" and first.meta.sha256 == sha
    head = s3.head_object(Bucket=bucket, Key=first.key)
    assert head["ContentLength"] == tiny[0].stat().st_size
    assert head["Metadata"] == {"sha256": sha, "size": str(tiny[0].stat().st_size), "name": "tiny-0",
                                "ctx": "512", "quant": "F32"}
    assert publish(tiny[0], bucket=bucket, client=s3).action == "unchanged"
    versions = s3.list_object_versions(Bucket=bucket, Prefix=first.key)["Versions"]
    assert len(versions) == 1  # publishing again wrote nothing
    renamed = publish(tiny[0], bucket=bucket, client=s3, name="tiny-renamed")
    assert renamed.action == "metadata-updated"
    assert s3.head_object(Bucket=bucket, Key=first.key)["Metadata"]["name"] == "tiny-renamed"
    meta = S3ModelSource(bucket, client=s3).head(sha)
    assert (meta.name, meta.ctx, meta.quant, meta.size) == ("tiny-renamed", 512, "F32", tiny[0].stat().st_size)
    with pytest.raises(Exception):
        publish(Path(__file__), bucket=bucket, client=s3)  # not a GGUF file: refused before any upload


def test_fetch_by_hash_then_cache_hit(s3, bucket, tiny, tmp_path):
    sha = publish(tiny[0], bucket=bucket, client=s3).meta.sha256
    calls, events = gets(s3), []
    st = store(s3, bucket, tmp_path / "cache", events=events)
    assert st.has(sha) and not st.has("0" * 64) and not st.has("not-a-hash")
    path = st.path(sha)
    assert path == tmp_path / "cache" / f"{sha}.gguf" and file_sha256(path) == sha
    assert path.read_bytes() == tiny[0].read_bytes()
    assert st.path(sha) == path  # a hit: no second download
    assert len(calls) == 1 and st.stats.downloads == 1 and st.stats.hits == 1
    assert [e for e, _ in events] == ["downloaded"] and events[0][1]["bytes"] == tiny[0].stat().st_size
    assert st.hashes() == [sha]
    assert not list((tmp_path / "cache").glob("*.part"))  # written to a temp file, renamed into place
    # A fresh process (a new Lambda environment on a warm /tmp) trusts what was verified before.
    again = store(s3, bucket, tmp_path / "cache")
    assert again.path(sha) == path and again.stats.downloads == 0 and len(calls) == 1
    with pytest.raises(Unavailable):
        st.path("1" * 64)  # not published


@pytest.mark.parametrize("damage", ["other-file", "flipped-byte", "truncated"])
def test_a_corrupted_object_is_rejected_and_never_cached(s3, bucket, tiny, tmp_path, damage):
    sha = file_sha256(tiny[0])
    good = tiny[0].read_bytes()
    bad = {"other-file": tiny[1].read_bytes(),
           "flipped-byte": good[:1000] + bytes([good[1000] ^ 1]) + good[1001:],
           "truncated": good[:-4096]}[damage]
    key = S3ModelSource(bucket, client=s3).key(sha)
    s3.put_object(Bucket=bucket, Key=key, Body=bad, Metadata={"sha256": sha, "name": "tiny-0"})
    events = []
    st = store(s3, bucket, tmp_path / "cache", events=events)
    for _ in range(2):  # every retry checks again: nothing bad was kept
        with pytest.raises(ModelIntegrityError) as exc:
            st.path(sha)
        assert exc.value.code == "model_integrity" and not isinstance(exc.value, ValueError)
        assert not (tmp_path / "cache" / f"{sha}.gguf").exists()
        assert not list((tmp_path / "cache").glob("*.part"))
    assert st.stats.rejected == 2 and st.stats.downloads == 0
    assert [e for e, _ in events] == ["rejected", "rejected"] and events[0][1]["got_sha256"] != sha
    # The operator republishes the real file: the next retry of the job succeeds.
    s3.put_object(Bucket=bucket, Key=key, Body=good, Metadata={"sha256": sha, "name": "tiny-0"})
    assert file_sha256(st.path(sha)) == sha and st.stats.downloads == 1


def test_least_recently_used_files_are_evicted_to_stay_within_the_budget(s3, bucket, tiny, tmp_path):
    hashes = [publish(p, bucket=bucket, client=s3).meta.sha256 for p in tiny]
    size = tiny[0].stat().st_size
    assert all(p.stat().st_size == size for p in tiny)
    events = []
    st = store(s3, bucket, tmp_path / "cache", max_bytes=int(2.5 * size), events=events)
    a, b, c = hashes
    st.path(a)
    st.path(b)
    st.path(a)  # a is now the most recently used
    st.path(c)  # 3 files do not fit 2.5: b goes
    assert sorted(st.hashes()) == sorted([a, c])
    assert [f["sha256"] for e, f in events if e == "evicted"] == [b]
    st.path(b)  # fetched again (a, the least recently used now, makes room)
    assert sorted(st.hashes()) == sorted([b, c]) and st.stats.downloads == 4 and st.stats.evicted == 2
    total = sum(p.stat().st_size for p in (tmp_path / "cache").glob("*.gguf"))
    assert total <= st.max_bytes
    small = store(s3, bucket, tmp_path / "small", max_bytes=size - 1)
    with pytest.raises(Unavailable) as exc:
        small.path(a)
    assert exc.value.code == "model_too_large" and not small.hashes()


def test_concurrent_fetches_of_one_hash_download_it_once(s3, bucket, tmp_path):
    """Eight threads over two store instances sharing one cache directory (the flock, not only the thread
    lock, keeps them apart) ask for the same model at once: one GetObject, everyone gets the file."""
    from ig3.local.fleet import smollm2_path

    sha = publish(smollm2_path(), bucket=bucket, client=s3).meta.sha256  # ~94 MiB: a download takes a while
    calls = gets(s3)
    stores = [store(s3, bucket, tmp_path / "cache"), store(s3, bucket, tmp_path / "cache")]
    barrier = threading.Barrier(8)
    results, errors = [], []

    def fetch(i):
        barrier.wait()
        try:
            results.append(stores[i % 2].path(sha))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 8 and len(set(results)) == 1
    assert len(calls) == 1
    assert sum(s.stats.downloads for s in stores) == 1 and sum(s.stats.hits for s in stores) == 7
    assert file_sha256(results[0]) == sha
    st = next(s for s in stores if s.stats.downloads)
    mb_s = st.stats.downloaded_bytes / 2**20 / st.stats.download_s
    print(f"\nSmolLM2 {st.stats.downloaded_bytes / 2**20:.1f} MiB from moto S3, sha256 while streaming: "
          f"{st.stats.download_s:.2f} s ({mb_s:.0f} MiB/s)")


def test_ig3_models_publish_command(moto_endpoint, s3, bucket, tiny):
    from typer.testing import CliRunner

    from ig3.cli import app

    runner = CliRunner()
    args = ["models", "publish", str(tiny[2]), "--name", "tiny-two", "--bucket", bucket,
            "--endpoint-url", moto_endpoint]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout.strip().splitlines()[-1])
    sha = file_sha256(tiny[2])
    assert out == {"action": "uploaded", "sha256": sha, "bytes": tiny[2].stat().st_size, "name": "tiny-two",
                   "ctx": 512, "quant": "F32", "uri": f"s3://{bucket}/models/{sha}.gguf"}
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and json.loads(second.stdout.strip().splitlines()[-1])["action"] == "unchanged"
    missing = runner.invoke(app, ["models", "publish", str(tiny[2]), "--bucket", ""], env={})
    assert missing.exit_code == 2
