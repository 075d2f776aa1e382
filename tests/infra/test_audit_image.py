"""The audit function as synthesized: a container image (recorded at synth, built by `cdk deploy`) with
llama-cpp-python compiled from its pinned sdist, the models bucket's name in its environment, a role that
may only read that bucket's models prefix; the models bucket itself; the Dockerfile's pins against
requirements/dev.lock (Docker cannot run here, so the pins are what can be checked)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ig3.topology import TOPOLOGY

from .conftest import REPO, by_path, resources

DOCKERFILE = REPO / "infra" / "cdk" / "docker" / "audit.Dockerfile"
BUILD_LOCK = REPO / "infra" / "cdk" / "docker" / "audit-build.lock"


def _statements(policy: dict) -> list[dict]:
    return policy["Properties"]["PolicyDocument"]["Statement"]


def _flat(value) -> str:
    """A CloudFormation string (Fn::Join parts, Refs) as one string, for matching."""
    return json.dumps(value)


def test_audit_is_an_image_function_with_the_models_bucket(prod):
    fn = TOPOLOGY.function("audit")
    assert fn.package == "image" and fn.image == "audit" and fn.reads_buckets == (("models", "models/"),)
    props = by_path(prod.stateless, "AWS::Lambda::Function", "/Functions/")["audit"]["Properties"]
    assert props["PackageType"] == "Image" and "ImageUri" in props["Code"] and "Handler" not in props
    assert props["ImageConfig"]["Command"] == ["ig3_functions.audit.handler.handler"]
    assert props["MemorySize"] == fn.memory_mb >= 3008
    assert props["EphemeralStorage"] == {"Size": fn.ephemeral_mb} and fn.ephemeral_mb >= 4096
    assert props["Timeout"] == fn.timeout_s
    assert TOPOLOGY.queue("audit").visibility_timeout_s >= 6 * fn.timeout_s  # AWS's advice for SQS sources
    env = props["Environment"]["Variables"]
    assert "ig3-prod-models-" in _flat(env["IG3_AUDIT_MODELS_BUCKET"])
    assert not any(k.startswith("AWS_LWA_") for k in env) and "IG3_AUDIT_MODELS_DIR" not in env
    # Only the audit function learns the bucket's name.
    fns = by_path(prod.stateless, "AWS::Lambda::Function", "/Functions/")
    assert [n for n, f in fns.items() if "IG3_AUDIT_MODELS_BUCKET" in f["Properties"]["Environment"]["Variables"]] \
        == ["audit"]


def test_only_the_audit_role_reads_the_models_bucket_and_only_reads(prod):
    policies = by_path(prod.stateless, "AWS::IAM::Policy", "/Functions/")
    readers = sorted(n for n, p in policies.items() if "-models-" in _flat(p))
    assert readers == ["audit-role"]
    s3 = [s for s in _statements(policies["audit-role"]) if any(a.startswith("s3:") for a in
                                                                 ([s["Action"]] if isinstance(s["Action"], str)
                                                                  else s["Action"]))]
    by_action = {(s["Action"] if isinstance(s["Action"], str) else tuple(s["Action"])): _flat(s["Resource"])
                 for s in s3}
    assert set(by_action) == {"s3:GetObject", "s3:ListBucket"}
    assert by_action["s3:GetObject"].endswith('-models-", {"Ref": "AWS::AccountId"}, "-", {"Ref": "AWS::Region"}, '
                                              '"/models/*"]]}')
    assert "/" not in by_action["s3:ListBucket"].split("-models-", 1)[1]  # the bucket itself, no object path
    assert all(s["Effect"] == "Allow" for s in s3)
    doc = _flat(policies["audit-role"])
    for write in ("s3:PutObject", "s3:DeleteObject", "s3:*", "s3:GetObjectVersion"):
        assert write not in doc


def test_the_models_bucket_is_private_encrypted_tls_only_versioned_and_retained(prod):
    buckets = by_path(prod.stateful, "AWS::S3::Bucket", "/Buckets/")
    raw = buckets["models"]
    props = raw["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                                       "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["OwnershipControls"]["Rules"][0]["ObjectOwnership"] == "BucketOwnerEnforced"
    (rule,) = props["LifecycleConfiguration"]["Rules"]
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 90 and rule["Status"] == "Enabled"
    assert "ig3-prod-models-" in _flat(props["BucketName"])
    assert raw["DeletionPolicy"] == "Retain" and raw["UpdateReplacePolicy"] == "Retain"
    logical = next(k for k, v in resources(prod.stateful, "AWS::S3::Bucket").items() if v is raw)
    (policy,) = [p for p in resources(prod.stateful, "AWS::S3::BucketPolicy").values()
                 if p["Properties"]["Bucket"] == {"Ref": logical}]
    (deny,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # Access logs: acknowledged for cdk-nag with its reason, as for the rag bucket (test_nag_and_lint).


def test_the_image_asset_is_recorded_with_its_build_context(prod):
    assets = json.loads((prod.outdir / "ig3-prod-stateless.assets.json").read_text())["dockerImages"]
    audit = [a for a in assets.values()
             if "public.ecr.aws/lambda/python:3.11" in (prod.outdir / a["source"]["directory"] / "Dockerfile").read_text()]
    assert len(audit) == 1
    src = audit[0]["source"]
    assert "ASGI_APP" not in src.get("dockerBuildArgs", {})
    assert src.get("platform") == "linux/arm64"
    ctx = prod.outdir / src["directory"]
    assert (ctx / "Dockerfile").read_text() == DOCKERFILE.read_text()
    assert (ctx / "audit-build.lock").read_text() == BUILD_LOCK.read_text()
    reqs = (ctx / "requirements.txt").read_text()
    names = set(re.findall(r"(?m)^([A-Za-z0-9][A-Za-z0-9._-]*)==", reqs))
    assert {"llama-cpp-python", "gguf", "numpy", "pydantic", "aws-lambda-powertools", "redis", "orjson"} <= names
    assert not names & {"litellm", "web3", "eth-account", "awsiotsdk", "paho-mqtt", "torch", "faiss-cpu"}
    assert all("--hash=sha256:" in line for line in reqs.splitlines() if line.strip())
    edge = {p.relative_to(ctx / "ig3_edge").as_posix() for p in (ctx / "ig3_edge").rglob("*.py")}
    assert edge == {"__init__.py", "scoring.py", "models.py", "backends/__init__.py", "backends/base.py",
                    "backends/llama_cpp.py"}
    assert (ctx / "ig3_functions" / "audit" / "handler.py").is_file()
    assert (ctx / "ig3" / "audit" / "models.py").is_file() and not (ctx / "ig3" / "local").exists()


def _lock_pins(path: Path) -> dict[str, tuple[str, set[str]]]:
    import sys

    sys.path.insert(0, str(REPO / "infra" / "cdk"))
    from ig3_cdk.packaging import read_lock

    return {n: (p.version, set(p.hashes)) for n, p in read_lock(path).items()}


def test_dockerfile_pins_match_the_locks(prod):
    """What the image builds is what the tests ran against: llama-cpp-python's sdist at the version and
    hash of requirements/dev.lock, every install hash-checked, no unpinned build dependency, portable build,
    compilers only in the builder stage."""
    dockerfile = DOCKERFILE.read_text()
    assets = json.loads((prod.outdir / "ig3-prod-stateless.assets.json").read_text())["dockerImages"]
    ctx = next(prod.outdir / a["source"]["directory"] for a in assets.values()
               if (prod.outdir / a["source"]["directory"] / "Dockerfile").read_text() == dockerfile)
    dev = _lock_pins(REPO / "requirements" / "dev.lock")
    image = _lock_pins(ctx / "requirements.txt")
    for name, (version, hashes) in image.items():
        assert dev[name] == (version, hashes), name  # every pin, hashes included, straight from the dev lock
    assert image["llama-cpp-python"][0] == dev["llama-cpp-python"][0]
    import llama_cpp  # the version the tests here ran

    assert llama_cpp.__version__ == image["llama-cpp-python"][0]
    build = _lock_pins(BUILD_LOCK)
    assert {"scikit-build-core", "cmake", "ninja"} <= set(build)
    assert all(hashes for _, hashes in build.values())
    for name in set(build) & set(dev):  # shared distributions agree with the dev lock
        assert build[name][0] == dev[name][0], name

    stages = re.split(r"(?m)^FROM ", dockerfile)[1:]
    assert len(stages) == 2, "multi-stage: a builder and the runtime"
    builder, runtime = stages
    assert builder.startswith("${BASE} AS build") and runtime.startswith("${BASE}")
    assert re.search(r"(?m)^ARG BASE=public\.ecr\.aws/lambda/python:3\.11$", dockerfile)
    pip_installs = re.findall(r"pip install[^\n]*", builder.replace("\\\n", " "))  # continuations joined
    assert len(pip_installs) == 2 and all("--require-hashes" in p for p in pip_installs)
    assert "-r /build/audit-build.lock" in pip_installs[0]
    main = pip_installs[1]
    assert "--no-build-isolation" in main and "--only-binary=:all:" in main and "--no-binary=llama-cpp-python" in main
    assert "-DGGML_NATIVE=OFF" in re.search(r'CMAKE_ARGS="([^"]*)"', builder).group(1)
    assert "pip install" not in runtime and "yum" not in runtime and "dnf" not in runtime
    assert "COPY --from=build /opt/site" in runtime
    assert re.search(r'(?m)^CMD \["ig3_functions\.audit\.handler\.handler"\]$', runtime)
    assert "import llama_cpp" in runtime  # the build fails if the library cannot load in the runtime image


def test_the_size_report_estimates_the_audit_image(prod):
    import sys

    sys.path.insert(0, str(REPO / "infra" / "cdk"))
    from ig3_cdk.report import LAMBDA_BASE_IMAGE_BYTES, sizes

    rows = {r["artifact"]: r for r in sizes(str(prod.outdir), prod.stacks[1])["rows"]}
    row = rows["audit (image, estimate)"]
    assert row["image"] and row["bytes"] > LAMBDA_BASE_IMAGE_BYTES + 50 * 2**20  # llama.cpp + numpy at least
    print(f"\naudit image estimate: {row['bytes'] / 2**20:.0f} MiB "
          f"(llm: {rows['llm (image, estimate)']['bytes'] / 2**20:.0f} MiB)")
