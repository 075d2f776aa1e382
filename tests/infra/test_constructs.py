"""``aws_cdk.assertions.Template`` tests, one group per construct, on the prod and dev synths."""
from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Match, Template

from ig3.topology import TOPOLOGY

from .conftest import by_path, resources


@pytest.fixture(scope="module")
def stateful(prod) -> Template:
    return Template.from_json(prod.stateful)


@pytest.fixture(scope="module")
def stateless(prod) -> Template:
    return Template.from_json(prod.stateless)


# ------------------------------------------------------------------ stateful
def test_tables_pitr_deletion_protection_ttl_and_indexes(stateful, prod, dev):
    for t in TOPOLOGY.tables:
        props = {
            "BillingMode": "PAY_PER_REQUEST",
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "DeletionProtectionEnabled": True,
            "SSESpecification": {"SSEEnabled": True},
            "KeySchema": Match.array_with([{"AttributeName": t.pk, "KeyType": "HASH"}]),
        }
        if t.ttl_attribute:
            props["TimeToLiveSpecification"] = {"AttributeName": t.ttl_attribute, "Enabled": True}
        if t.gsis:
            props["GlobalSecondaryIndexes"] = Match.array_with(
                [Match.object_like({"IndexName": name}) for name, _, _ in t.gsis])
        stateful.has_resource("AWS::DynamoDB::Table", {"Properties": Match.object_like(props),
                                                       "DeletionPolicy": "Retain"})
    # dev: no deletion protection, data destroyed with the stack
    for table in resources(dev.stateful, "AWS::DynamoDB::Table").values():
        assert table["Properties"].get("DeletionProtectionEnabled") is False
        assert table["DeletionPolicy"] == "Delete"


def test_queues_encrypted_tls_only_with_dlqs(stateful):
    n = len(TOPOLOGY.queues) + sum(q.dlq for q in TOPOLOGY.queues)
    stateful.resource_count_is("AWS::SQS::Queue", n)
    stateful.all_resources_properties("AWS::SQS::Queue", {"SqsManagedSseEnabled": True})
    stateful.resource_count_is("AWS::SQS::QueuePolicy", n)
    stateful.all_resources_properties("AWS::SQS::QueuePolicy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])}})


def test_event_bus_with_archive_and_rules(stateful):
    stateful.resource_count_is("AWS::Events::EventBus", 1)
    stateful.has_resource_properties("AWS::Events::Archive", {"RetentionDays": 90,
                                                              "EventPattern": {"source": ["ig3"]}})
    for rule in TOPOLOGY.event_rules:
        stateful.has_resource_properties("AWS::Events::Rule", {
            "EventPattern": {"source": [rule.source], "detail-type": list(rule.detail_types)},
            "Targets": [Match.object_like({"DeadLetterConfig": Match.any_value(),
                                           "RetryPolicy": Match.any_value()})]})


def test_secrets(stateful):
    stateful.resource_count_is("AWS::SecretsManager::Secret", len(TOPOLOGY.secrets))
    stateful.all_resources_properties("AWS::SecretsManager::Secret", {
        "GenerateSecretString": Match.object_like({"SecretStringTemplate": '{"keys": []}'})})


def test_cache_is_valkey_serverless_in_the_vpc_with_usage_limits(stateful):
    stateful.has_resource_properties("AWS::ElastiCache::ServerlessCache", {
        "Engine": "valkey", "MajorEngineVersion": "8",
        "SubnetIds": Match.any_value(), "SecurityGroupIds": Match.any_value(),
        "CacheUsageLimits": {"DataStorage": {"Maximum": 10, "Unit": "GB"},
                             "ECPUPerSecond": {"Maximum": 100000}}})


def test_network_endpoints_and_nat_only_when_declared(stateful, prod, dev):
    egress = any(f.uses_redis and f.internet for f in TOPOLOGY.functions)
    stateful.resource_count_is("AWS::EC2::NatGateway", 2 if egress else 0)  # prod: one per AZ
    stateful.resource_count_is("AWS::EC2::InternetGateway", 1 if egress else 0)
    assert len(resources(dev.stateful, "AWS::EC2::NatGateway")) == (1 if egress else 0)
    stateful.resource_count_is("AWS::EC2::FlowLog", 1)
    endpoints = resources(prod.stateful, "AWS::EC2::VPCEndpoint").values()
    services = json.dumps([e["Properties"]["ServiceName"] for e in endpoints])
    for service in ("dynamodb", "s3", "sqs", "events", "iot.data", "sagemaker.runtime", "secretsmanager", "xray"):
        assert f".{service}" in services, service
    gateway = [e for e in endpoints if e["Properties"].get("VpcEndpointType", "Gateway") == "Gateway"]
    assert len(gateway) == 2  # DynamoDB + S3: free
    (zone,) = resources(prod.stateful, "AWS::Route53::HostedZone").values()
    assert "data-ats.iot." in json.dumps(zone["Properties"]["Name"]) and zone["Properties"]["VPCs"]
    # the cache only accepts its clients' security group
    stateful.has_resource_properties("AWS::EC2::SecurityGroupIngress", {"FromPort": 6379, "ToPort": 6379,
                                                                        "SourceSecurityGroupId": Match.any_value()})


# ------------------------------------------------------------------ functions
def test_one_role_per_function_and_only_declared_resources(prod):
    fns = by_path(prod.stateless, "AWS::Lambda::Function", "/Functions/")
    roles = {json.dumps(f["Properties"]["Role"]) for f in fns.values()}
    assert len(roles) == len(TOPOLOGY.functions)
    policies = by_path(prod.stateless, "AWS::IAM::Policy", "/Functions/")
    tables = by_path(prod.stateful, "AWS::DynamoDB::Table", "/Tables/")
    table_logical = {name: next(k for k, v in prod.stateful["Resources"].items() if v is res)
                     for name, res in tables.items()}
    for f in TOPOLOGY.functions:
        doc = json.dumps(policies[f"{f.name}-role"]["Properties"]["PolicyDocument"])
        for name, logical in table_logical.items():
            # table ARNs arrive as exports named after the table's logical id
            assert (logical in doc) == (name in f.tables), (f.name, name)
        assert ("events:PutEvents" in doc) == f.publishes_events, f.name
        assert ("iot:Publish" in doc) == f.publishes_iot, f.name
        assert ("secretsmanager:GetSecretValue" in doc) == bool(f.secrets), f.name
        assert ("secretsmanager:PutSecretValue" in doc) == bool(f.secrets_written), f.name
        assert ("s3:PutObject" in doc) == bool(f.buckets), f.name  # only declared buckets' objects
        assert ('"dynamodb:*"' not in doc) and ('"sqs:*"' not in doc)


def test_redis_functions_in_vpc_others_not(prod):
    from .conftest import Resolver

    r = Resolver(prod.stateful, prod.stateless)
    fns = by_path(prod.stateless, "AWS::Lambda::Function", "/Functions/")
    for f in TOPOLOGY.functions:
        props = fns[f.name]["Properties"]
        assert ("VpcConfig" in props) == f.uses_redis, f.name
        if f.uses_redis:
            # isolated subnets (AWS only, via endpoints) unless the function declares internet access
            subnets = {r.path_of(s).split("/Vpc/", 1)[1].split("Subnet", 1)[0] for s in props["VpcConfig"]["SubnetIds"]}
            assert subnets == ({"egress"} if f.internet else {"isolated"}), (f.name, subnets)
        assert props["Architectures"] == ["arm64"]
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["LoggingConfig"]["LogFormat"] == "JSON"
        if f.uses_redis:
            assert props["Environment"]["Variables"]["REDIS_URL"]


def test_zip_functions_share_the_core_layer(stateless, prod):
    # + 1: the AWS CLI layer of the dashboard's BucketDeployment handler (CDK's own).
    stateless.resource_count_is("AWS::Lambda::LayerVersion",
                                len({l for f in TOPOLOGY.functions if f.package == "zip" for l in f.layers}) + 1)
    stateless.has_resource_properties("AWS::Lambda::LayerVersion", {"CompatibleRuntimes": ["python3.11"],
                                                                     "CompatibleArchitectures": ["arm64"]})


def test_image_function_and_iot_client_authorizer(tmp_path_factory):
    """A package="image" function: image asset recorded, LWA in response_stream mode, streaming routes;
    plus an IoT client authorizer (both added to the topology if it has none yet), cdk-nag clean."""
    import dataclasses

    from ig3.topology import ApiRoute, Function

    from .conftest import synth

    topo = TOPOLOGY
    if not any(f.package == "image" for f in topo.functions):
        topo = dataclasses.replace(
            topo, functions=topo.functions + (Function("llm", "ig3_functions.llm.app:app", "functions/llm",
                                                        package="image", uses_redis=True),),
            routes=topo.routes + (ApiRoute("POST", "/v1/chat/completions", "llm", auth="user"),))
    if not topo.iot_authorizer:
        topo = dataclasses.replace(topo, iot_authorizer=topo.authorizer)
    image_fns = [f for f in topo.functions if f.package == "image"]
    s = synth(tmp_path_factory.mktemp("image"), topology=topo, **{"ig3:stage": "dev"})
    assert s.error is None and not s.nag_errors(), (s.error, s.nag_errors())
    (authorizer,) = resources(s.stateless, "AWS::IoT::Authorizer").values()
    assert authorizer["Properties"]["Status"] == "ACTIVE"
    fns = by_path(s.stateless, "AWS::Lambda::Function", "/Functions/")
    routed = {r.function for r in topo.routes}
    from ig3_cdk.constructs.functions import IMAGES

    for f in image_fns:
        props = fns[f.name]["Properties"]
        assert props["PackageType"] == "Image" and "ImageUri" in props["Code"]
        if not IMAGES[f.image].web_adapter:  # the base image's runtime client calls the handler itself
            assert not any(k.startswith("AWS_LWA_") for k in props["Environment"]["Variables"]), f.name
            assert props["ImageConfig"]["Command"] == [f.handler.replace(":", ".")], f.name
        elif f.name in routed:  # a web app behind Lambda Web Adapter
            assert props["Environment"]["Variables"]["AWS_LWA_INVOKE_MODE"] == "response_stream"
        else:  # queue-fed (the cloud worker): the adapter POSTs each event to the topology handler
            env = props["Environment"]["Variables"]
            assert env["AWS_LWA_INVOKE_MODE"] == "buffered" and env["AWS_LWA_PASS_THROUGH_PATH"] == "/events"
            assert env["IG3_EVENT_HANDLER"] == f.handler
    image_routes = [r for r in topo.routes if r.function in {f.name for f in image_fns}]
    stream_methods = [m for m in resources(s.stateless, "AWS::ApiGateway::Method").values()
                      if m["Properties"]["Integration"].get("ResponseTransferMode") == "STREAM"]
    assert len(stream_methods) == len(image_routes)
    for m in stream_methods:
        uri = json.dumps(m["Properties"]["Integration"]["Uri"])
        assert "2021-11-15/functions/" in uri and "/response-streaming-invocations" in uri
    assets = json.loads((s.outdir / f"ig3-dev-stateless.assets.json").read_text())
    images = assets.get("dockerImages", {})
    assert len(images) == len(image_fns)
    apps = []
    for image in images.values():
        ctx = s.outdir / image["source"]["directory"]
        dockerfile = (ctx / "Dockerfile").read_text()
        if "aws-lambda-adapter" not in dockerfile:  # the audit image: test_audit_image.py
            assert "public.ecr.aws/lambda/python:3.11" in dockerfile
            continue
        assert "--require-hashes" in dockerfile
        apps.append(image["source"].get("dockerBuildArgs", {}).get("ASGI_APP"))
        reqs = (ctx / "requirements.txt").read_text()
        assert "litellm==" in reqs and "--hash=sha256:" in reqs
        assert (ctx / "ig3" / "wire.py").is_file() and not (ctx / "ig3" / "local").exists()
    assert sorted(apps) == sorted(f.handler if f.name in routed else "ig3.lambda_events:app"
                                  for f in image_fns if IMAGES[f.image].web_adapter)


def test_cloud_worker_fed_by_the_dispatcher(stateless, prod):
    """The SageMaker fallback runs in its own image function, one task per invocation, fed by the
    dispatcher through the cloud queue; the dispatcher knows the endpoint and its models (env) but
    may not invoke it; only the worker may."""
    from ig3.topology import SAGEMAKER_ENDPOINT_ENV, SAGEMAKER_MODELS_ENV

    workers = [f for f in TOPOLOGY.functions if f.invokes_sagemaker and
               any(t.queue == "cloud" for t in f.triggers)]
    assert len(workers) == 1
    worker = workers[0]
    assert worker.package == "image" and worker.timeout_s > 60 and worker.triggers[0].batch_size == 1
    assert TOPOLOGY.queue("cloud").visibility_timeout_s >= 6 * worker.timeout_s
    assert "cloud" in TOPOLOGY.function("dispatch").queues
    fns = by_path(prod.stateless, "AWS::Lambda::Function", "/Functions/")
    policies = by_path(prod.stateless, "AWS::IAM::Policy", "/Functions/")
    for name in ("dispatch", worker.name):
        env = fns[name]["Properties"]["Environment"]["Variables"]
        assert env[SAGEMAKER_ENDPOINT_ENV] == "ig3-prod-fallback" and env[SAGEMAKER_MODELS_ENV]
    invokes = {name for name, p in policies.items() if "sagemaker:InvokeEndpoint" in json.dumps(p)}
    assert invokes == {f"{f.name}-role" for f in TOPOLOGY.functions if f.invokes_sagemaker}
    assert f"{worker.name}-role" in invokes and "dispatch-role" not in invokes


def test_an_existing_sagemaker_endpoint_from_context(tmp_path_factory):
    from ig3.topology import SAGEMAKER_ENDPOINT_ENV, SAGEMAKER_MODELS_ENV

    from .conftest import synth

    s = synth(tmp_path_factory.mktemp("ext-endpoint"), **{"ig3:stage": "dev", "ig3:sagemaker": "off",
                                                          "ig3:sagemaker-endpoint": "my-endpoint",
                                                          "ig3:sagemaker-served-models": "m1,m2"})
    assert s.error is None, s.error
    assert not resources(s.stateless, "AWS::SageMaker::Endpoint")
    fns = by_path(s.stateless, "AWS::Lambda::Function", "/Functions/")
    env = fns["dispatch"]["Properties"]["Environment"]["Variables"]
    assert env[SAGEMAKER_ENDPOINT_ENV] == "my-endpoint" and env[SAGEMAKER_MODELS_ENV] == "m1,m2"


# ------------------------------------------------------------------ API
def test_api_authorizer_validation_throttling_logs(stateless, prod):
    stateless.has_resource_properties("AWS::ApiGateway::Authorizer", {
        "Type": "REQUEST", "IdentitySource": "method.request.header.Authorization",
        "AuthorizerResultTtlInSeconds": 300})
    stateless.has_resource_properties("AWS::ApiGateway::RequestValidator", {
        "ValidateRequestBody": True, "ValidateRequestParameters": True})
    stateless.has_resource_properties("AWS::ApiGateway::Stage", {
        "StageName": "prod", "TracingEnabled": True,
        "AccessLogSetting": Match.object_like({"DestinationArn": Match.any_value()}),
        "MethodSettings": Match.array_with([Match.object_like({
            "ThrottlingRateLimit": 1000, "ThrottlingBurstLimit": 2000, "LoggingLevel": "ERROR",
            "DataTraceEnabled": False, "MetricsEnabled": True})])})
    # every method is validated; path parameters are required
    for m in resources(prod.stateless, "AWS::ApiGateway::Method").values():
        assert "RequestValidatorId" in m["Properties"]
    stateless.has_resource_properties("AWS::ApiGateway::Method", {
        "HttpMethod": "GET", "RequestParameters": {"method.request.path.id": True}})


def test_gateway_errors_use_the_one_error_shape(stateless, prod):
    for gr in resources(prod.stateless, "AWS::ApiGateway::GatewayResponse").values():
        template = gr["Properties"]["ResponseTemplates"]["application/json"]
        assert template.startswith('{"error": {"type": ') and '"code": ' in template
    stateless.has_resource_properties("AWS::ApiGateway::GatewayResponse", {
        "ResponseType": "UNAUTHORIZED", "StatusCode": "401"})


# ------------------------------------------------------------------ IoT / Greengrass
def test_iot_rules_device_policy_thing_group(stateless, prod):
    stateless.resource_count_is("AWS::IoT::TopicRule", len(TOPOLOGY.iot_rules))
    stateless.all_resources_properties("AWS::IoT::TopicRule", {"TopicRulePayload": Match.object_like({
        "AwsIotSqlVersion": "2016-03-23", "ErrorAction": Match.object_like({"Sqs": Match.any_value()})})})
    stateless.has_resource_properties("AWS::IoT::ThingGroup", {"ThingGroupName": "ig3-prod-devices"})
    (policy,) = resources(prod.stateless, "AWS::IoT::Policy").values()
    doc = json.dumps(policy["Properties"]["PolicyDocument"])
    assert "${iot:Connection.Thing.ThingName}" in doc
    assert "ig3/v1/devices/${iot:Connection.Thing.ThingName}/results" in doc
    assert "iot:Connection.Thing.IsAttached" in doc
    assert '"iot:*"' not in doc


def test_greengrass_component_and_deployment(stateless, prod):
    (component,) = resources(prod.stateless, "AWS::GreengrassV2::ComponentVersion").values()
    recipe = json.dumps(component["Properties"]["InlineRecipe"])
    assert "ComponentName" in recipe and "s3://" in recipe and "Manifests" in recipe
    # the artifact is the CDK asset; paths into it follow the folder Greengrass unpacks it to
    assets = json.loads((prod.outdir / "ig3-prod-stateless.assets.json").read_text())
    # the dashboard's BucketDeployment ships a zip asset too (the AWS CLI layer): pick the edge's
    (edge,) = [a for a in assets["files"].values()
               if a["source"]["path"].endswith(".zip") and a.get("displayName", "").startswith("Edge/")]
    key = next(iter(edge["destinations"].values()))["objectKey"]
    assert key in recipe and "{artifacts:decompressedPath}/" + key[: -len(".zip")] in recipe
    assert "BUCKET_NAME" not in recipe and "decompressedPath}/ig3-edge-agent" not in recipe
    stateless.has_resource_properties("AWS::GreengrassV2::Deployment", {
        "TargetArn": Match.any_value(),
        "DeploymentPolicies": Match.object_like({"FailureHandlingPolicy": "ROLLBACK"})})
    stateless.has_resource_properties("AWS::IoT::RoleAlias", {"RoleAlias": "ig3-prod-tes"})


# ------------------------------------------------------------------ SageMaker
def test_sagemaker_fallback_is_configured_by_stage(stateless, prod, dev):
    stateless.has_resource_properties("AWS::SageMaker::Model", {"PrimaryContainer": Match.object_like({
        "Environment": Match.object_like({"OPTION_TENSOR_PARALLEL_DEGREE": "4"})})})
    stateless.has_resource_properties("AWS::SageMaker::EndpointConfig", {
        "KmsKeyId": Match.any_value(),
        "ProductionVariants": [Match.object_like({"InstanceType": "ml.g5.12xlarge", "InitialInstanceCount": 1})]})
    stateless.resource_count_is("AWS::SageMaker::Endpoint", 1)
    (dev_config,) = resources(dev.stateless, "AWS::SageMaker::EndpointConfig").values()
    assert dev_config["Properties"]["ProductionVariants"][0]["InstanceType"] == "ml.g5.xlarge"


def test_sagemaker_s3_model_runs_isolated_in_the_vpc(tmp_path_factory):
    from .conftest import synth

    s = synth(tmp_path_factory.mktemp("sm"), **{"ig3:stage": "dev", "ig3:sagemaker-model": "s3://models-bucket/qwen/",
                                                "ig3:sagemaker-tp": "2"})
    assert s.error is None, s.nag_errors()
    t = Template.from_json(s.stateless)
    t.has_resource_properties("AWS::SageMaker::Model", {
        "EnableNetworkIsolation": True, "VpcConfig": Match.any_value(),
        "PrimaryContainer": Match.object_like({
            "Environment": Match.object_like({"OPTION_TENSOR_PARALLEL_DEGREE": "2"}),
            "ModelDataSource": {"S3DataSource": Match.object_like({"S3Uri": "s3://models-bucket/qwen/"})}})})


# ------------------------------------------------------------------ monitoring
def test_alarms_and_dashboard(stateless, prod):
    alarms = resources(prod.stateless, "AWS::CloudWatch::Alarm")
    dlqs = [q for q in TOPOLOGY.queues if q.dlq]
    described = json.dumps([a["Properties"].get("AlarmDescription", "") for a in alarms.values()])
    for q in dlqs:
        assert f"the {q.name} DLQ" in described
    for f in TOPOLOGY.functions:
        assert f"{f.name}: more than 5% of invocations failed" in described
        assert f"{f.name} was throttled" in described
    stateless.all_resources_properties("AWS::CloudWatch::Alarm", {"AlarmActions": Match.any_value()})
    stateless.resource_count_is("AWS::CloudWatch::Dashboard", 1)
    stateless.has_resource_properties("AWS::SNS::Topic", {"KmsMasterKeyId": Match.any_value()})
