"""The dashboard on S3 + CloudFront: private bucket, the files + a generated config.json, OAC, the
two origins (bucket for the page, API for ``/v1/*``), security headers, HTTPS/TLS — as synthesized.

The whole-app templates come from the session fixtures (cdk-nag and cfn-lint over them run in
``test_nag_and_lint.py``); the certificate variant and the no-Docker check synth the construct
alone in a small stack (a REST API with one route), which takes seconds.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO, by_path, cdk_context, resources

DASHBOARD = REPO / "layers" / "core" / "ig3" / "dashboard"
CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"  # AWS managed cache policy ids
CACHING_OPTIMIZED = "658327ea-f89d-4fab-a63d-7e88639e58f6"
ALL_VIEWER_EXCEPT_HOST = "b689b0a8-53d0-40ab-baf2-68738e2966ac"  # managed origin request policy


def _one(template: dict, rtype: str, prefix: str = "/Dashboard/") -> tuple[str, dict]:
    found = [(k, v) for k, v in resources(template, rtype).items()
             if prefix in v.get("Metadata", {}).get("aws:cdk:path", "")]
    assert len(found) == 1, (rtype, [k for k, _ in found])
    return found[0]


def _distribution(template: dict) -> dict:
    return _one(template, "AWS::CloudFront::Distribution")[1]["Properties"]["DistributionConfig"]


def _behaviors(config: dict) -> dict[str, dict]:
    out = {b["PathPattern"]: b for b in config["CacheBehaviors"]}
    out["default"] = config["DefaultCacheBehavior"]
    return out


def _origins(config: dict) -> dict[str, dict]:
    return {o["Id"]: o for o in config["Origins"]}


# ------------------------------------------------------------------ bucket
@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_site_bucket_is_private_encrypted_versioned_logged_tls_only(stage, request):
    t = request.getfixturevalue(stage).stateless
    buckets = by_path(t, "AWS::S3::Bucket", "/Dashboard/")
    site, logs = buckets["Site"]["Properties"], buckets["Logs"]["Properties"]
    logical = {cdk_id: k for k, v in resources(t, "AWS::S3::Bucket").items()
               for cdk_id, r in buckets.items() if r is v}
    for props in (site, logs):
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True}
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
            "ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        assert "AccessControl" not in props  # no legacy ACLs; log delivery runs on a bucket policy
    assert site["VersioningConfiguration"] == {"Status": "Enabled"}
    assert site["OwnershipControls"]["Rules"][0]["ObjectOwnership"] == "BucketOwnerEnforced"
    assert site["LoggingConfiguration"] == {"DestinationBucketName": {"Ref": logical["Logs"]},
                                            "LogFilePrefix": "s3/"}
    # Retained in prod, removed (with its objects) in dev.
    raw = resources(t, "AWS::S3::Bucket")[logical["Site"]]
    assert raw["DeletionPolicy"] == ("Retain" if stage == "prod" else "Delete")

    policies = {p["Properties"]["Bucket"]["Ref"]: p["Properties"]["PolicyDocument"]["Statement"]
                for p in resources(t, "AWS::S3::BucketPolicy").values()
                if "Ref" in p["Properties"]["Bucket"]}
    for name in ("Site", "Logs"):
        assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
                   for s in policies[logical[name]]), name
    # Only CloudFront, and only this distribution, may read the site's objects.
    reads = [s for s in policies[logical["Site"]] if s["Effect"] == "Allow"
             and s.get("Principal") == {"Service": "cloudfront.amazonaws.com"}]
    assert len(reads) == 1 and reads[0]["Action"] == "s3:GetObject"
    dist_id = _one(t, "AWS::CloudFront::Distribution")[0]
    assert {"Ref": dist_id} in reads[0]["Condition"]["StringEquals"]["AWS:SourceArn"]["Fn::Join"][1]
    assert not any(s.get("Principal") in ("*", {"AWS": "*"}) and s["Effect"] == "Allow"
                   for s in policies[logical["Site"]])
    # S3 log delivery may write only the site bucket's logs into the log bucket.
    delivery = [s for s in policies[logical["Logs"]]
                if s.get("Principal") == {"Service": "logging.s3.amazonaws.com"}]
    assert len(delivery) == 1
    assert delivery[0]["Condition"]["ArnLike"]["aws:SourceArn"] == {"Fn::GetAtt": [logical["Site"], "Arn"]}


# ------------------------------------------------------------------ deployment + config.json
def _asset_dir(s, key: str) -> Path:
    return s.outdir / f"asset.{key.removesuffix('.zip')}"


def test_deployment_ships_the_dashboard_files_and_a_generated_config(dev):
    t = dev.stateless
    _, dep = _one(t, "Custom::CDKBucketDeployment")
    p = dep["Properties"]
    site_id = next(k for k, v in resources(t, "AWS::S3::Bucket").items()
                   if v["Metadata"]["aws:cdk:path"].endswith("/Dashboard/Site/Resource"))
    assert p["DestinationBucketName"] == {"Ref": site_id}
    assert p["DestinationBucketKeyPrefix"] == "dashboard/"
    assert p["Prune"] is True
    # Every deploy invalidates the page (config.json included) at the edge.
    assert p["DistributionId"] == {"Ref": _one(t, "AWS::CloudFront::Distribution")[0]}
    assert p["DistributionPaths"] == ["/dashboard/*"]

    files_dir, config_dir = (_asset_dir(dev, k) for k in p["SourceObjectKeys"])
    shipped = sorted(f.name for f in files_dir.iterdir())
    expected = sorted(f.name for f in DASHBOARD.iterdir() if f.is_file() and f.name != "config.json")
    assert shipped == expected and "index.html" in shipped
    for name in shipped:  # byte-identical to the repository's files
        assert (files_dir / name).read_bytes() == (DASHBOARD / name).read_bytes(), name
    assert [f.name for f in config_dir.iterdir()] == ["config.json"]

    # config.json: the endpoint is a deploy-time value (a marker CDK's handler substitutes).
    raw = (config_dir / "config.json").read_text()
    markers = p["SourceMarkers"][1]
    assert len(markers) == 1
    marker, value = next(iter(markers.items()))
    parts = value["Fn::Join"][1]
    assert parts[0] == '"wss://' and parts[-1] == '/mqtt"'
    endpoint_id = parts[1]["Fn::GetAtt"][0]
    assert parts[1]["Fn::GetAtt"][1] == "endpointAddress"
    config = json.loads(raw.replace(marker, '"wss://abc123-ats.iot.eu-west-1.amazonaws.com/mqtt"'))
    assert config == {"transport": "mqtt", "url": "wss://abc123-ats.iot.eu-west-1.amazonaws.com/mqtt",
                      "authorizer": "ig3-dev-clients"}
    # The keys are the ones the page reads.
    app_js = re.sub(r"//.*", "", (DASHBOARD / "app.js").read_text())  # code, not its comments
    assert set(re.findall(r"(?<![\"\w])config\.(\w+)", app_js)) == set(config)
    assert (DASHBOARD / "config.json").read_text().strip() == '{"transport": "sse"}'  # local copy untouched

    # The endpoint comes from iot:DescribeEndpoint (ATS data endpoint) and the authorizer is the stack's.
    lookup = t["Resources"][endpoint_id]["Properties"]
    create = json.loads(lookup["Update"]) if isinstance(lookup["Update"], str) else lookup["Update"]
    assert create["service"] == "Iot" and create["action"] == "describeEndpoint"
    assert create["parameters"] == {"endpointType": "iot:Data-ATS"}
    assert resources(t, "AWS::IoT::Authorizer") and all(
        a["Properties"]["AuthorizerName"] == config["authorizer"]
        for a in resources(t, "AWS::IoT::Authorizer").values())


# ------------------------------------------------------------------ CloudFront
def test_oac_fronts_the_bucket_for_the_dashboard(dev):
    t = dev.stateless
    oac_id, oac = _one(t, "AWS::CloudFront::OriginAccessControl")
    assert oac["Properties"]["OriginAccessControlConfig"] | {"Name": None} == {
        "Name": None, "OriginAccessControlOriginType": "s3", "SigningBehavior": "always",
        "SigningProtocol": "sigv4"}
    cfg = _distribution(t)
    origins = _origins(cfg)
    behaviors = _behaviors(cfg)
    s3_origin = origins[behaviors["/dashboard/*"]["TargetOriginId"]]
    assert s3_origin["OriginAccessControlId"] == {"Fn::GetAtt": [oac_id, "Id"]}
    assert s3_origin["S3OriginConfig"] == {"OriginAccessIdentity": ""}  # OAC, not a legacy OAI
    assert "DashboardSite" in s3_origin["DomainName"]["Fn::GetAtt"][0]
    assert behaviors["default"]["TargetOriginId"] == behaviors["/dashboard/*"]["TargetOriginId"]
    for name in ("default", "/dashboard/*"):
        b = behaviors[name]
        assert b["ViewerProtocolPolicy"] == "redirect-to-https"
        assert b["AllowedMethods"] == ["GET", "HEAD", "OPTIONS"]
        assert b["CachePolicyId"] == CACHING_OPTIMIZED
        assert [f["EventType"] for f in b["FunctionAssociations"]] == ["viewer-request"]


def test_api_is_the_second_origin_for_v1_uncached_all_methods_authorization_forwarded(dev):
    t = dev.stateless
    cfg = _distribution(t)
    b = _behaviors(cfg)["/v1/*"]
    assert b["ViewerProtocolPolicy"] == "https-only"
    assert sorted(b["AllowedMethods"]) == sorted(["GET", "HEAD", "OPTIONS", "PUT", "PATCH", "POST", "DELETE"])
    assert b["CachePolicyId"] == CACHING_DISABLED
    assert b["OriginRequestPolicyId"] == ALL_VIEWER_EXCEPT_HOST  # Authorization goes, Host stays API Gateway's
    assert "FunctionAssociations" not in b
    origin = _origins(cfg)[b["TargetOriginId"]]
    assert origin["CustomOriginConfig"]["OriginProtocolPolicy"] == "https-only"
    assert origin["CustomOriginConfig"]["OriginSSLProtocols"] == ["TLSv1.2"]
    rest_api = next(k for k, v in resources(t, "AWS::ApiGateway::RestApi").items()
                    if v["Metadata"]["aws:cdk:path"].endswith("/Api/Api/Resource"))
    text = json.dumps(origin["DomainName"])
    assert f'{{"Ref": "{rest_api}"}}' in text and ".execute-api." in text
    stage = next(k for k in resources(t, "AWS::ApiGateway::Stage"))
    assert f'{{"Ref": "{stage}"}}' in json.dumps(origin["OriginPath"])  # /<stage> + /v1/... = the route


def test_security_headers_policy_on_every_behaviour(dev):
    t = dev.stateless
    policy_id, policy = _one(t, "AWS::CloudFront::ResponseHeadersPolicy")
    sec = policy["Properties"]["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"]
    csp = sec["ContentSecurityPolicy"]
    assert csp["Override"] is True
    parts = csp["ContentSecurityPolicy"]["Fn::Join"][1]
    rendered = "".join(p if isinstance(p, str) else "<" + p["Ref"] + ">" for p in parts)
    directives = dict(d.strip().split(" ", 1) for d in rendered.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["connect-src"] == "'self' wss://*.iot.<AWS::Region>.amazonaws.com"
    assert directives["script-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert sec["StrictTransportSecurity"]["AccessControlMaxAgeSec"] >= 31536000
    assert sec["ContentTypeOptions"] == {"Override": True}
    assert sec["FrameOptions"]["FrameOption"] == "DENY"
    for name, b in _behaviors(_distribution(t)).items():
        assert b["ResponseHeadersPolicyId"] == {"Ref": policy_id}, name
    # The page itself makes no request the CSP would block: scripts and styles are its own files.
    html = (DASHBOARD / "index.html").read_text()
    assert "<script>" not in html and " style=" not in html
    assert all(not src.startswith(("http:", "https:", "//"))
               for src in re.findall(r'(?:src|href)="([^"]+)"', html))


def test_https_only_logging_and_output(dev):
    t = dev.stateless
    cfg = _distribution(t)
    assert cfg["Enabled"] is True and cfg["HttpVersion"] == "http2and3"
    assert cfg["Logging"]["Prefix"] == "cloudfront/"
    assert "DashboardLogs" in cfg["Logging"]["Bucket"]["Fn::GetAtt"][0]
    # No certificate configured: the *.cloudfront.net name (CFR4 acknowledged in the construct).
    assert "ViewerCertificate" not in cfg or cfg["ViewerCertificate"].get("CloudFrontDefaultCertificate")
    outputs = [o for k, o in t["Outputs"].items() if k.startswith("Dashboard")]
    assert len(outputs) == 1 and "/dashboard/" in json.dumps(outputs[0]["Value"])


# ------------------------------------------------------------------ the viewer-request function
@pytest.mark.skipif(shutil.which("node") is None, reason="node runs the CloudFront function's code")
@pytest.mark.parametrize("uri, expect", [
    ("/", ("redirect", "/dashboard/")),
    ("/dashboard", ("redirect", "/dashboard/")),
    ("/dashboard/", ("uri", "/dashboard/index.html")),
    ("/dashboard/app.js", ("uri", "/dashboard/app.js")),
    ("/dashboard/config.json", ("uri", "/dashboard/config.json")),
])
def test_index_function_redirects_and_rewrites(dev, uri, expect):
    _, fn = _one(dev.stateless, "AWS::CloudFront::Function")
    assert fn["Properties"]["FunctionConfig"]["Runtime"] == "cloudfront-js-2.0"
    code = fn["Properties"]["FunctionCode"]
    script = code + "\nconsole.log(JSON.stringify(handler({request: {uri: %s, headers: {}}})));" % json.dumps(uri)
    out = json.loads(subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True,
                                    timeout=30).stdout)
    if expect[0] == "redirect":
        assert out["statusCode"] == 301 and out["headers"]["location"]["value"] == expect[1]
    else:
        assert out["uri"] == expect[1]


# ------------------------------------------------------------------ standalone: certificate, no Docker
def _standalone(tmp: Path, **context: str) -> dict:
    """The construct alone in a small stack; Docker replaced by a recorder that fails loudly."""
    from aws_cdk import App, Stack
    from aws_cdk import aws_apigateway as apigw

    from ig3_cdk.constructs.dashboard import Dashboard
    from ig3_cdk.settings import load

    marker = tmp / "docker-called"
    recorder = tmp / "docker"
    recorder.write_text(f"#!/bin/sh\necho \"$@\" >> {marker}\nexit 1\n")
    recorder.chmod(0o755)
    old = os.environ.get("CDK_DOCKER")
    os.environ["CDK_DOCKER"] = str(recorder)
    try:
        app = App(outdir=str(tmp / "out"), context=cdk_context(**{"ig3:stage": "prod", **context}))
        stack = Stack(app, "dash")
        api = apigw.RestApi(stack, "Api", deploy_options=apigw.StageOptions(stage_name="prod"))
        api.root.add_resource("v1").add_method("GET", apigw.MockIntegration())
        Dashboard(stack, "Dashboard", api=api, settings=load(app.node), iot_client_authorizer=None)
        app.synth()
    finally:
        if old is None:
            os.environ.pop("CDK_DOCKER", None)
        else:
            os.environ["CDK_DOCKER"] = old
    assert not marker.exists(), marker.read_text()
    return json.loads((tmp / "out" / "dash.template.json").read_text())


def test_custom_domain_gets_tls12_2021_and_synth_never_calls_docker(tmp_path):
    cert = "arn:aws:acm:us-east-1:123456789012:certificate/0b5c2a7e-1111-2222-3333-444455556666"
    t = _standalone(tmp_path, **{"ig3:dashboard-domain": "dash.example.org", "ig3:dashboard-cert-arn": cert})
    cfg = _distribution(t)
    assert cfg["Aliases"] == ["dash.example.org"]
    assert cfg["ViewerCertificate"] == {"AcmCertificateArn": cert, "MinimumProtocolVersion": "TLSv1.2_2021",
                                        "SslSupportMethod": "sni-only"}
    # Without a client authorizer the page still gets MQTT, with no authorizer key.
    _, dep = _one(t, "Custom::CDKBucketDeployment")
    keys = dep["Properties"]["SourceObjectKeys"]
    raw = (tmp_path / "out" / f"asset.{keys[1].removesuffix('.zip')}" / "config.json").read_text()
    assert json.loads(re.sub(r"<<marker:[^>]+>>", '"x"', raw)) == {"transport": "mqtt", "url": "x"}
