"""Synthesize the CDK app once per session (per stage) and share the templates.

Test synths use ``ig3:bundle=source`` (the real handler/layer layout, no pip) so the suite stays
fast; ``test_bundling.py`` runs the real pip bundling once (cached by the lock + sources hash).
cdk-nag runs in every synth, as in ``make synth``: a nag error fails the synth.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CDK_DIR = REPO / "infra" / "cdk"
if str(CDK_DIR) not in sys.path:
    sys.path.insert(0, str(CDK_DIR))
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")


def cdk_context(**overrides: str) -> dict:
    ctx = json.loads((CDK_DIR / "cdk.json").read_text())["context"]
    ctx["aws:cdk:enable-path-metadata"] = True  # what the CDK CLI sets: resources carry their construct path
    ctx.update(overrides)
    return ctx


@dataclass
class Synth:
    stage: str
    outdir: Path
    seconds: float
    error: Exception | None
    stateful: dict = field(default_factory=dict)
    stateless: dict = field(default_factory=dict)
    stacks: object = None

    def report(self) -> dict:
        path = self.outdir / "validation-report.json"
        return json.loads(path.read_text()) if path.exists() else {"pluginReports": []}

    def nag_errors(self) -> list[tuple[str, list[str]]]:
        return [(v["ruleName"], [c["constructPath"] for c in v["violatingConstructs"]])
                for r in self.report()["pluginReports"] for v in r.get("violations", [])
                if v.get("severity") == "error"]


def synth(tmp_root: Path, topology=None, **context: str) -> Synth:
    from aws_cdk import App

    from ig3.topology import TOPOLOGY
    from ig3_cdk.app import build, stack_names

    ctx = cdk_context(**{"ig3:bundle": "source", **context})
    outdir = tmp_root / f"cdk-{ctx['ig3:stage']}-{int(time.time() * 1000)}"
    started = time.perf_counter()
    app = App(outdir=str(outdir), context=ctx)
    settings, stateful, stateless = build(app, topology or TOPOLOGY)
    error = None
    try:
        app.synth()
    except Exception as exc:  # noqa: BLE001 - cdk-nag failures surface as a jsii RuntimeError
        error = exc
    seconds = time.perf_counter() - started
    names = stack_names(settings.stage)
    load = lambda n: json.loads((outdir / f"{n}.template.json").read_text())  # noqa: E731
    return Synth(settings.stage, outdir, seconds, error, load(names[0]), load(names[1]), (stateful, stateless))


@pytest.fixture(scope="session")
def prod(tmp_path_factory) -> Synth:
    return synth(tmp_path_factory.mktemp("synth"), **{"ig3:stage": "prod"})


@pytest.fixture(scope="session")
def dev(tmp_path_factory) -> Synth:
    return synth(tmp_path_factory.mktemp("synth"), **{"ig3:stage": "dev"})


# ------------------------------------------------------------------ template helpers
def resources(template: dict, rtype: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == rtype}


def cdk_path(resource: dict) -> str:
    return resource.get("Metadata", {}).get("aws:cdk:path", "")


def by_path(template: dict, rtype: str, prefix: str) -> dict[str, dict]:
    """``{construct id below prefix: resource}`` for resources of ``rtype`` under a construct path prefix."""
    out = {}
    for r in resources(template, rtype).values():
        path = cdk_path(r)
        if prefix in path:
            rest = path.split(prefix, 1)[1]
            out[rest.split("/", 1)[0]] = r
    return out


class Resolver:
    """Follows ``Fn::ImportValue`` and ``Fn::GetAtt``/``Ref`` to the construct path of a resource."""

    def __init__(self, stateful: dict, stateless: dict):
        self.stateful, self.stateless = stateful, stateless
        self.exports = {o["Export"]["Name"]: o["Value"] for o in stateful.get("Outputs", {}).values()
                        if "Export" in o}

    def path_of(self, value, template: dict | None = None) -> str | None:
        template = template or self.stateless
        if isinstance(value, dict):
            if "Fn::ImportValue" in value:
                return self.path_of(self.exports[value["Fn::ImportValue"]], self.stateful)
            if "Fn::GetAtt" in value:
                return cdk_path(template["Resources"][value["Fn::GetAtt"][0]])
            if "Ref" in value and value["Ref"] in template["Resources"]:
                return cdk_path(template["Resources"][value["Ref"]])
            if "Fn::Join" in value:
                for part in value["Fn::Join"][1]:
                    p = self.path_of(part, template)
                    if p:
                        return p
        return None
