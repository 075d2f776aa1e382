"""The Greengrass component: recipe against the v2 recipe schema, its wiring to the agent's options,
the build artifact (deterministic, runnable from the zip alone, no cloud-only packages)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

import ig3_edge
from ig3 import wire
from ig3_edge import build
from ig3_edge.config import build_parser

EDGE = Path(build.__file__).resolve().parents[1]
REPO = EDGE.parents[1]
SCHEMA = json.loads((Path(__file__).parent / "greengrass_recipe.schema.json").read_text())
CLOUD_ONLY = ("boto3", "botocore", "litellm", "aws_lambda_powertools", "web3")


@pytest.fixture(scope="module")
def recipe() -> dict:
    return yaml.safe_load((EDGE / "recipe.yaml").read_text())


def test_recipe_is_valid_against_the_v2_recipe_schema(recipe):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(recipe, SCHEMA)
    # The schema is strict enough to catch the usual mistakes.
    for broken in ({**recipe, "RecipeFormatVersion": "2020-01-26"},
                   {**recipe, "ComponentVersion": "1.0"},
                   {**recipe, "Manifests": [{**recipe["Manifests"][0], "Lifecycle": {"Run": "x"}}]},
                   {**recipe, "Manifests": [{**recipe["Manifests"][0],
                                             "Artifacts": [{"Uri": "s3://b/k.zip", "Unarchive": "TAR"}]}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA)


def test_access_control_is_exactly_this_devices_topics(recipe):
    policies = recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
    assert set(policies) == {"aws.greengrass.ipc.mqttproxy"}
    allowed: dict[str, set[str]] = {}
    for policy in policies["aws.greengrass.ipc.mqttproxy"].values():
        for op in policy["operations"]:
            allowed.setdefault(op, set()).update(policy["resources"])
    thing = "{iot:thingName}"
    assert allowed == {
        "aws.greengrass#SubscribeToIoTCore": {wire.device_tasks_topic("X").replace("X", thing),
                                              wire.device_cancel_topic("X").replace("X", thing)},
        "aws.greengrass#PublishToIoTCore": {wire.device_results_topic("X").replace("X", thing),
                                            wire.device_heartbeat_topic("X").replace("X", thing),
                                            "ig3/v1/tasks/+/stream"},
    }


def test_recipe_wiring_matches_the_agent(recipe):
    manifest = recipe["Manifests"][0]
    run = manifest["Lifecycle"]["run"]
    assert "-m ig3_edge --transport ipc --thing {iot:thingName}" in run["Script"]
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    options = {a.dest.upper() for a in build_parser()._actions}
    for var, value in run["Setenv"].items():
        if not var.startswith("IG3_AGENT_"):
            continue
        assert var.removeprefix("IG3_AGENT_") in options, f"{var} is not an agent option"
        for key in re.findall(r"\{configuration:/([^}]+)\}", value):
            assert key in defaults, f"{var} reads a configuration key with no default: {key}"
    assert run["Setenv"]["IG3_AGENT_VERSION"] == recipe["ComponentVersion"] == ig3_edge.__version__
    gdk = json.loads((EDGE / "gdk-config.json").read_text())
    assert gdk["component"]["com.ig3.EdgeAgent"]["version"] == recipe["ComponentVersion"]
    assert gdk["component"]["com.ig3.EdgeAgent"]["build"]["custom_build_command"][-2:] == ["ig3_edge.build", "--gdk"]
    assert manifest["Artifacts"][0]["Uri"].endswith("/" + build.ARTIFACT)
    assert "{artifacts:decompressedPath}/ig3-edge-agent/requirements-edge.lock" in manifest["Lifecycle"]["install"]["Script"]


def test_edge_lock_pins_agree_with_the_dev_lock():
    pin = re.compile(r"^([A-Za-z0-9_.-]+)==([^ \\]+)", re.M)
    edge = dict(pin.findall((EDGE / "requirements-edge.lock").read_text()))
    dev = {k.lower(): v for k, v in pin.findall((REPO / "requirements" / "dev.lock").read_text())}
    assert {"llama-cpp-python", "gguf", "paho-mqtt", "eth-account", "awsiotsdk", "pydantic", "psutil"} <= set(edge)
    assert not {k for k in edge if k.lower().replace("_", "-") in {"boto3", "botocore", "litellm", "web3"}}
    assert {k: v for k, v in edge.items() if dev.get(k.lower()) != v} == {}


def test_build_is_deterministic_and_runs_from_the_zip_alone(tmp_path):
    zip1, recipe_out, digest1 = build.build(tmp_path / "a")
    _zip2, _r, digest2 = build.build(tmp_path / "b")
    assert digest1 == digest2
    assert zip1 == tmp_path / "a" / "artifacts" / "com.ig3.EdgeAgent" / ig3_edge.__version__ / "ig3-edge-agent.zip"
    assert yaml.safe_load(recipe_out.read_text())["ComponentName"] == "com.ig3.EdgeAgent"
    names = zipfile.ZipFile(zip1).namelist()
    assert "ig3/wire.py" in names and "ig3_edge/agent.py" in names and "requirements-edge.lock" in names
    assert [n for n in names if n.startswith("ig3/")] == ["ig3/__init__.py", "ig3/wire.py"]
    root = tmp_path / "ig3-edge-agent"  # what Greengrass unpacks it to
    zipfile.ZipFile(zip1).extractall(root)
    probe = (
        "import sys, json, ig3_edge, ig3, ig3.wire\n"
        "import ig3_edge.main, ig3_edge.agent, ig3_edge.backends.llama_cpp, ig3_edge.backends.openai_server\n"
        "import ig3_edge.transports.mqtt, ig3_edge.transports.ipc, ig3_edge.transports.greengrass_v1\n"
        "print(json.dumps({'edge': ig3_edge.__file__, 'ig3': ig3.__file__, 'mods': sorted(sys.modules)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(root), "PATH": "/usr/bin"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["edge"].startswith(str(root)) and info["ig3"].startswith(str(root))
    loaded = {m.split(".")[0] for m in info["mods"]}
    assert not loaded & set(CLOUD_ONLY), loaded & set(CLOUD_ONLY)
    assert "llama_cpp" not in loaded  # heavy engine: imported on first use only
    help_out = subprocess.run([sys.executable, "-m", "ig3_edge", "--help"], cwd=tmp_path,
                              env={"PYTHONPATH": str(root), "PATH": "/usr/bin"}, capture_output=True, text=True,
                              timeout=60)
    assert help_out.returncode == 0 and "--transport" in help_out.stdout


def test_build_refuses_cloud_only_imports():
    assert build.forbidden_imports("x.py", b"def f():\n    import boto3\n") == {"boto3"}
    assert build.forbidden_imports("x.py", b"from litellm import completion\n") == {"litellm"}
    assert build.forbidden_imports("x.py", b"import json, paho.mqtt.client\n") == set()
