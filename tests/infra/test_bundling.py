"""The real bundling, once: pip for manylinux wheels, no Docker, artifacts that import.

Synthesizes with ``ig3:bundle=full`` for x86_64 (this host's architecture, so the handlers can be
imported from the bundles themselves), with ``CDK_DOCKER`` pointing at a recorder that fails: a
Docker call anywhere in synth (bundling or image assets) would leave a trace. Bundles are cached
by the hash of the lock, the requirement set and the sources, so reruns only copy.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from ig3.topology import TOPOLOGY

from .conftest import synth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    marker = tmp / "docker-called"
    recorder = tmp / "docker"
    recorder.write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\nexit 1\n")
    recorder.chmod(0o755)
    old = os.environ.get("CDK_DOCKER")
    os.environ["CDK_DOCKER"] = str(recorder)
    try:
        s = synth(tmp, **{"ig3:stage": "dev", "ig3:bundle": "full", "ig3:arch": "x86_64", "ig3:nag": "off"})
    finally:
        if old is None:
            os.environ.pop("CDK_DOCKER", None)
        else:
            os.environ["CDK_DOCKER"] = old
    return s, marker


def test_synth_never_calls_docker(full):
    s, marker = full
    assert s.error is None, s.error
    assert not marker.exists(), marker.read_text()


def _runtime_sdk(tmp: Path) -> Path:
    """What the Lambda Python runtime provides that we do not bundle: boto3/botocore/s3transfer."""
    d = tmp / "runtime"
    d.mkdir(exist_ok=True)
    for dist in ("boto3", "botocore", "s3transfer"):
        top = (metadata.distribution(dist).read_text("top_level.txt") or dist).split()[0]
        src = Path(metadata.distribution(dist).locate_file(top))
        if not (d / top).exists():
            (d / top).symlink_to(src)
    return d


def test_every_zip_function_imports_from_its_own_artifacts(full, tmp_path):
    """Import each handler with only its zip, its layers and the runtime's SDK on sys.path."""
    s, _ = full
    stateless = s.stacks[1]
    from ig3_cdk.packaging import CACHE

    runtime = _runtime_sdk(tmp_path)
    compute = stateless.compute
    for f in TOPOLOGY.functions:
        if f.package != "zip":
            continue
        paths = [CACHE / compute.assets[f"fn-{f.name}"].key()]
        paths += [CACHE / compute.assets[f"layer-{n}"].key() / "python" for n in f.layers]
        paths.append(runtime)
        module, _, attr = f.handler.partition(":")
        code = ("import sys; sys.path[:0] = %r; import importlib; m = importlib.import_module(%r); "
                "assert callable(getattr(m, %r))" % ([str(p) for p in paths], module, attr))
        env = {"PATH": "/usr/bin:/bin", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
               "POWERTOOLS_TRACE_DISABLED": "true", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        # -S: no site-packages of this venv — only the artifacts and the standard library.
        done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env,
                              timeout=120)
        assert done.returncode == 0, f"{f.name}: {done.stderr[-2000:]}"


def test_sizes_within_the_lambda_limit(full):
    s, _ = full
    from ig3_cdk.packaging import LAMBDA_LIMIT_BYTES
    from ig3_cdk.report import print_report, sizes

    report = sizes(str(s.outdir), s.stacks[1])
    print_report(report, settings=s.stacks[1].compute.settings, synth_s=s.seconds)
    for row in report["rows"]:
        if not row["image"]:
            assert row["bytes"] is not None and row["bytes"] <= LAMBDA_LIMIT_BYTES, row


def test_edge_artifact_is_the_edge_build(full):
    """The Greengrass artifact is ig3_edge.build's deterministic zip: agent, wire module, lock."""
    import zipfile

    s, _ = full
    assets = json.loads((s.outdir / "ig3-dev-stateless.assets.json").read_text())
    # the dashboard's BucketDeployment ships a zip asset too (the AWS CLI layer): pick the edge's
    (edge,) = [a for a in assets["files"].values()
               if a["source"]["path"].endswith(".zip") and a.get("displayName", "").startswith("Edge/")]
    with zipfile.ZipFile(s.outdir / edge["source"]["path"]) as z:
        names = set(z.namelist())
        lock = z.read("requirements-edge.lock").decode()
    assert {"ig3_edge/__main__.py", "ig3/wire.py", "requirements-edge.lock"} <= names
    assert not any(n.startswith("ig3/") and n not in ("ig3/__init__.py", "ig3/wire.py") for n in names)
    assert "--hash=sha256:" in lock and "boto3==" not in lock and "litellm==" not in lock


EVM_SMOKE = r"""
from coincurve import PrivateKey
from ig3.evm.keys import eip191_hash, recover_eip191, address_of_public_key
from ig3.evm.abi import decode, encode
k = PrivateKey(b"\x22" * 32)
s = k.sign_recoverable(eip191_hash(b"m"), hasher=None)
assert recover_eip191(b"m", s[:64] + bytes([s[64] + 27])) == address_of_public_key(k.public_key.format())
assert decode(["(bytes,uint32)"], encode(["(bytes,uint32)"], [(b"x", 7)])) == ((b"x", 7),)
from ig3.evm.rpc import JsonRpcClient
JsonRpcClient("https://rpc.example/")
"""
API_SMOKE = EVM_SMOKE + r"""
from ig3.did.local import make_device_identity
from ig3.did.codec import decode_attribute_value, encode_attribute_value
from ig3.did.verify import verify_did_signature
import nacl.signing, sr25519, base58
priv, did, doc = make_device_identity("bundle")
assert decode_attribute_value(encode_attribute_value(doc)).id == doc.id
k = PrivateKey(bytes.fromhex(priv[2:]))
s = k.sign_recoverable(eip191_hash(b"hi"), hasher=None)
assert verify_did_signature(doc, b"hi", "0x" + (s[:64] + bytes([s[64] + 27])).hex()).startswith(doc.id)
"""


def test_evm_paths_run_from_their_artifacts_without_web3(full, tmp_path):
    """api, results and deposits run their signature / ABI / JSON-RPC code from their own zips
    (coincurve, pycryptodome, protobuf, PyNaCl, sr25519 are there); web3 and eth-account are not."""
    s, _ = full
    from ig3_cdk.packaging import CACHE

    compute = s.stacks[1].compute
    runtime = _runtime_sdk(tmp_path)
    for name, smoke in (("api", API_SMOKE), ("results", EVM_SMOKE), ("deposits", EVM_SMOKE)):
        fn = CACHE / compute.assets[f"fn-{name}"].key()
        assert not any((fn / d).exists() for d in ("web3", "eth_account", "eth_abi", "cytoolz")), name
        paths = [str(fn), str(CACHE / compute.assets["layer-core"].key() / "python"), str(runtime)]
        code = "import sys; sys.path[:0] = %r\n" % paths + smoke
        done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin"}, timeout=120)
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"


def test_bundles_carry_no_test_suites(full):
    s, _ = full
    from ig3_cdk.packaging import CACHE

    for name, art in s.stacks[1].compute.assets.items():
        root = CACHE / art.key()
        if not root.is_dir():
            continue
        tests = [p for p in root.rglob("tests") if p.is_dir()]
        assert not tests, (name, tests[:3])
        assert not list(root.rglob("*.pyi")), name


RAG_SMOKE = r"""
import sys
import numpy as np
import boto3
from ig3.rag.stores import FaissS3Store, FlatIndex, Point, QdrantRestStore
import ig3_functions.rag.handler  # noqa: F401
ix = FlatIndex(3, "ip")
ix.add_with_ids(np.eye(3, dtype=np.float32), [7, 8, 9])
assert [i for _, i in ix.search(np.array([0, 1, 0.5], dtype=np.float32), 2)] == [8, 9]
assert FlatIndex.deserialize(ix.serialize()).serialize() == ix.serialize()
# the Faiss store on S3 (the moto server), numpy engine
s3 = boto3.client("s3", endpoint_url=MOTO, region_name="us-east-1")
faiss_store = FaissS3Store(BUCKET, client=s3, prefix="bundle/")
faiss_store.create("s", 3, "cosine")
faiss_store.upsert("s", [Point("a", [1, 0, 0], {"k": 1}), Point("b", [0, 1, 0], {"k": 2})])
assert [h.id for h in faiss_store.query("s", [0.1, 1, 0], top_k=2)] == ["b", "a"]
assert faiss_store.count("s", filter={"k": [1]}) == 1
# Qdrant over REST, against the stand-in server running in the test process
q = QdrantRestStore(QDRANT, api_key="bundle-key")
q.create("s", 3, "dot")
q.upsert("s", [Point("a", [1, 0, 0], {"k": 1}), Point("b", [0, 1, 0], {"k": 2})])
assert [h.id for h in q.query("s", [0.1, 1, 0], top_k=2)] == ["b", "a"]
assert q.delete("s", filter={"k": [1]}) == 1 and q.count("s") == 1
for banned in ("faiss", "qdrant_client", "grpc"):
    assert banned not in sys.modules, banned
"""


def _qdrant_standin():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "rag" / "qdrant_standin.py"
    spec = importlib.util.spec_from_file_location("_bundling_qdrant_standin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.QdrantStandIn


def test_rag_functions_carry_no_faiss_qdrant_client_or_grpc_and_run_their_stores(
        full, tmp_path, moto_endpoint):
    """rag / rag_ingest ship numpy only (issue #9): no faiss, qdrant-client or grpcio in their zips,
    and their store code runs from the zip alone (``python -S``): the numpy flat index on S3 (moto)
    and the REST adapter against the Qdrant stand-in (tests/rag/qdrant_standin.py)."""
    import uuid

    import boto3

    s, _ = full
    from ig3_cdk.packaging import CACHE

    compute = s.stacks[1].compute
    runtime = _runtime_sdk(tmp_path)
    bucket = "bundle-" + uuid.uuid4().hex[:8]
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    with _qdrant_standin()(api_key="bundle-key") as qdrant:
        for name in ("rag", "rag_ingest"):
            fn = CACHE / compute.assets[f"fn-{name}"].key()
            layer = CACHE / compute.assets["layer-core"].key() / "python"
            for root in (fn, layer):
                present = [d for d in ("faiss", "qdrant_client", "grpc", "grpcio") if (root / d).exists()]
                assert not present and not list(root.glob("faiss_cpu*")), (name, root, present)
            assert (fn / "numpy").is_dir(), name
            paths = [str(fn), str(layer), str(runtime)]
            code = (f"import sys; sys.path[:0] = {paths!r}\nMOTO, BUCKET, QDRANT = "
                    f"{moto_endpoint!r}, {bucket!r}, {qdrant.url!r}\n" + RAG_SMOKE)
            env = {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                   "POWERTOOLS_TRACE_DISABLED": "true"}
            done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                                  env=env, timeout=120)
            assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"
            qdrant.local.delete_collection("s")


def test_strip_never_keeps_a_library_the_loader_would_refuse(tmp_path):
    """binutils' strip breaks the segment alignment of patchelf-rewritten libraries (numpy.libs'
    OpenBLAS: "ELF load command address/offset not page-aligned"); prune keeps the original then."""
    import platform
    import shutil

    from ig3_cdk.packaging import loadable_segments, prune, strip_tool

    machine = platform.machine()
    tool = strip_tool(machine)
    libs = Path(metadata.distribution("numpy").locate_file("numpy.libs"))
    originals = sorted(p for p in libs.glob("*.so*") if p.is_file())
    if tool is None or not originals:
        pytest.skip("no strip for this host, or numpy without grafted libraries")
    assert all(loadable_segments(p.read_bytes()) for p in originals)
    broken = tmp_path / "raw-strip.so"
    subprocess.run([tool, "--strip-debug", "-o", str(broken), str(originals[0])], check=True)
    site = tmp_path / "site" / "numpy.libs"
    site.mkdir(parents=True)
    for p in originals:
        shutil.copy2(p, site / p.name)
    prune(tmp_path / "site", machine)
    assert all(loadable_segments(p.read_bytes()) for p in site.iterdir())
    assert loadable_segments(b"\x7fELF\x01" + bytes(60))  # not ELF64: nothing to check
    if not loadable_segments(broken.read_bytes()):
        # what a plain strip makes of it here: kept out of the bundle by prune
        assert any((site / p.name).read_bytes() == p.read_bytes() for p in originals)
