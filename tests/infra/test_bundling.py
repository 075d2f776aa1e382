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
