"""One topology: every function, trigger, schedule, queue, table, rule and route declared in
``ig3.topology.TOPOLOGY`` appears in the synthesized templates — and nothing else does.

The expected sets are computed from TOPOLOGY at test time, so entries added later are covered.
"""
from __future__ import annotations

import json

from ig3.topology import TOPOLOGY

from .conftest import Resolver, by_path, cdk_path, resources


def _name_after(path: str, marker: str) -> str:
    return path.split(marker, 1)[1].split("/", 1)[0]


def test_functions_match_topology(prod):
    fns = by_path(prod.stateless, "AWS::Lambda::Function", "/Functions/")
    assert set(fns) == {f.name for f in TOPOLOGY.functions}
    # No other Lambda anywhere but the dashboard's two CDK handlers (BucketDeployment's file copy and
    # the IoT-endpoint lookup): no other custom-resource providers sneaking in.
    others = sorted(cdk_path(r).split("/")[1] for r in resources(prod.stateless, "AWS::Lambda::Function").values()
                    if "/Functions/" not in cdk_path(r))
    assert len(others) == 2 and others[0] == "AWS679f53fac002430cb0da5b7982bd2287", others
    assert others[1].startswith("Custom::CDKBucketDeployment"), others
    assert len(resources(prod.stateless, "AWS::Lambda::Function")) == len(TOPOLOGY.functions) + 2
    assert not resources(prod.stateful, "AWS::Lambda::Function")
    for f in TOPOLOGY.functions:
        props = fns[f.name]["Properties"]
        assert props["MemorySize"] == f.memory_mb and props["Timeout"] == f.timeout_s
        if f.package == "image":
            assert props["PackageType"] == "Image"
        else:
            module, _, fn = f.handler.partition(":")
            assert props["Handler"] == f"{module}.{fn}"


def test_sqs_triggers_match_topology(prod):
    r = Resolver(prod.stateful, prod.stateless)
    actual = set()
    for esm in resources(prod.stateless, "AWS::Lambda::EventSourceMapping").values():
        fn = _name_after(cdk_path(esm), "/Functions/")
        queue = _name_after(r.path_of(esm["Properties"]["EventSourceArn"]), "/Queues/")
        p = esm["Properties"]
        assert p["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        actual.add((fn, queue, p["BatchSize"], p.get("MaximumBatchingWindowInSeconds", 0)))
    expected = {(f.name, t.queue, t.batch_size, t.max_batching_window_s) for f in TOPOLOGY.functions
                for t in f.triggers}
    assert actual == expected


def test_schedules_match_topology(prod):
    actual = set()
    for rule in resources(prod.stateless, "AWS::Events::Rule").values():
        if "ScheduleExpression" in rule["Properties"]:
            fn = _name_after(cdk_path(rule), "/Functions/").rsplit("-schedule-", 1)[0]
            target = rule["Properties"]["Targets"][0]["Arn"]
            assert target["Fn::GetAtt"][0] in prod.stateless["Resources"]
            assert _name_after(cdk_path(prod.stateless["Resources"][target["Fn::GetAtt"][0]]), "/Functions/") == fn
            actual.add((fn, rule["Properties"]["ScheduleExpression"]))
    assert actual == {(f.name, s) for f in TOPOLOGY.functions for s in f.schedules}


def test_queues_and_dlqs_match_topology(prod):
    queues = by_path(prod.stateful, "AWS::SQS::Queue", "/Queues/")
    expected = {q.name for q in TOPOLOGY.queues} | {f"{q.name}-dlq" for q in TOPOLOGY.queues if q.dlq}
    assert set(queues) == expected
    assert not resources(prod.stateless, "AWS::SQS::Queue")
    for q in TOPOLOGY.queues:
        props = queues[q.name]["Properties"]
        assert props["VisibilityTimeout"] == q.visibility_timeout_s
        if q.dlq:
            assert props["RedrivePolicy"]["maxReceiveCount"] == q.max_receive_count


def test_tables_and_secrets_match_topology(prod):
    assert set(by_path(prod.stateful, "AWS::DynamoDB::Table", "/Tables/")) == {t.name for t in TOPOLOGY.tables}
    assert len(resources(prod.stateful, "AWS::DynamoDB::Table")) == len(TOPOLOGY.tables)
    assert set(by_path(prod.stateful, "AWS::SecretsManager::Secret", "/Secrets/")) == \
        {s.name for s in TOPOLOGY.secrets}


def test_event_rules_match_topology(prod):
    r = Resolver(prod.stateful, prod.stateless)
    actual = {}
    for rule in resources(prod.stateful, "AWS::Events::Rule").values():
        name = _name_after(cdk_path(rule), "/Events/")
        target = rule["Properties"]["Targets"][0]["Arn"]
        actual[name] = (tuple(rule["Properties"]["EventPattern"]["detail-type"]),
                        rule["Properties"]["EventPattern"]["source"],
                        _name_after(r.path_of(target, prod.stateful), "/Queues/"))
    assert actual == {e.name: (e.detail_types, [e.source], e.target_queue) for e in TOPOLOGY.event_rules}


def test_iot_rules_match_topology(prod):
    r = Resolver(prod.stateful, prod.stateless)
    actual = {}
    for rule in resources(prod.stateless, "AWS::IoT::TopicRule").values():
        payload = rule["Properties"]["TopicRulePayload"]
        (action,) = payload["Actions"]
        actual[_name_after(cdk_path(rule), "/Iot/")] = (payload["Sql"],
                                                         _name_after(r.path_of(action["Sqs"]["QueueUrl"]), "/Queues/"))
    assert actual == {i.name: (i.sql, i.target_queue) for i in TOPOLOGY.iot_rules}


def test_routes_match_topology(prod):
    r = Resolver(prod.stateful, prod.stateless)
    actual = {}
    for method in resources(prod.stateless, "AWS::ApiGateway::Method").values():
        path = cdk_path(method).split("/Api/Api/Default", 1)[1]
        route_path, verb = path.rsplit("/", 2)[0], path.rsplit("/", 2)[1]
        p = method["Properties"]
        fn = _name_after(r.path_of(p["Integration"]["Uri"]), "/Functions/")
        actual[(verb, route_path)] = (fn, p["AuthorizationType"])
    expected = {(rt.method, rt.path): (rt.function, "NONE" if rt.auth == "none" else "CUSTOM")
                for rt in TOPOLOGY.routes}
    assert actual == expected


def test_function_environment_names_match_the_local_cloud(prod):
    """The env var names are ig3.topology's, exactly the set the function's declaration implies."""
    from ig3.topology import BUS_ENV, REDIS_ENV, queue_env, table_env

    fns = by_path(prod.stateless, "AWS::Lambda::Function", "/Functions/")
    for f in TOPOLOGY.functions:
        env = fns[f.name]["Properties"]["Environment"]["Variables"]
        resource_vars = {k for k in env if k.startswith(("IG3_TABLE_", "IG3_QUEUE_"))} | \
            ({BUS_ENV} & set(env)) | ({REDIS_ENV} & set(env))
        expected = {table_env(t) for t in f.tables} | {queue_env(q) for q in f.queues} | \
            {queue_env(t.queue) for t in f.triggers} | ({BUS_ENV} if f.publishes_events else set()) | \
            ({REDIS_ENV} if f.uses_redis else set())
        assert resource_vars == expected, f.name
        for s in f.secrets:
            secret = next(x for x in TOPOLOGY.secrets if x.name == s)
            assert secret.env in env, (f.name, secret.env)
        json.dumps(env)  # serialisable: no unresolved Python objects


def test_iot_client_authorizer_matches_topology(prod):
    authorizers = resources(prod.stateless, "AWS::IoT::Authorizer")
    assert len(authorizers) == (1 if TOPOLOGY.iot_authorizer else 0)
    for a in authorizers.values():
        fn_logical = a["Properties"]["AuthorizerFunctionArn"]["Fn::GetAtt"][0]
        assert _name_after(cdk_path(prod.stateless["Resources"][fn_logical]), "/Functions/") == TOPOLOGY.iot_authorizer
        assert a["Properties"]["SigningDisabled"] is True
        perms = [p for p in resources(prod.stateless, "AWS::Lambda::Permission").values()
                 if p["Properties"]["Principal"] == "iot.amazonaws.com"]
        assert len(perms) == 1 and "SourceArn" in perms[0]["Properties"]


def test_buckets_match_topology(prod):
    """Each declared bucket exists in the stateful stack (private, TLS-only, its lifecycle rules), and
    exactly the functions that declare it get its name and object access."""
    from ig3.topology import bucket_env

    buckets = by_path(prod.stateful, "AWS::S3::Bucket", "/Buckets/")
    assert set(buckets) == {b.name for b in TOPOLOGY.buckets}
    for b in TOPOLOGY.buckets:
        props = buckets[b.name]["Properties"]
        assert props["PublicAccessBlockConfiguration"]["BlockPublicPolicy"] is True
        rules = props.get("LifecycleConfiguration", {}).get("Rules", [])
        assert {(r["Prefix"], r["ExpirationInDays"]) for r in rules if "ExpirationInDays" in r} == \
            set(b.expire_prefixes)
        assert (props.get("VersioningConfiguration") == {"Status": "Enabled"}) == b.versioned, b.name
    fns = by_path(prod.stateless, "AWS::Lambda::Function", "/Functions/")
    variables = {b.variable for b in TOPOLOGY.buckets}
    for f in TOPOLOGY.functions:
        env = fns[f.name]["Properties"]["Environment"]["Variables"]
        declared = {bucket_env(b) for b in f.buckets} | \
            {TOPOLOGY.bucket(b).variable for b, _ in f.reads_buckets}
        assert {k for k in env if k.startswith("IG3_BUCKET_") or k in variables} == declared, f.name
    policies = json.dumps(resources(prod.stateless, "AWS::IAM::Policy"))
    assert "s3:PutObject" in policies
