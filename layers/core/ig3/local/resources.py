"""Create the topology's AWS resources (in moto server, or any endpoint boto3 is pointed at).

Returns the environment the functions read their resource names from (ig3.topology's
``table_env``/``queue_env``/``BUS_ENV``), so handlers run unchanged against what was made.
"""
from __future__ import annotations

import json
from typing import Any

import boto3

from ig3.topology import BUS_ENV, Topology, bucket_env, physical_name, queue_env, table_env


def provision(topology: Topology, *, endpoint_url: str, stage: str = "local", region: str = "us-east-1") -> dict[str, str]:
    kw: dict[str, Any] = {"endpoint_url": endpoint_url, "region_name": region,
                          "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    ddb = boto3.client("dynamodb", **kw)
    sqs = boto3.client("sqs", **kw)
    events = boto3.client("events", **kw)
    env: dict[str, str] = {}

    for t in topology.tables:
        name = physical_name(stage, t.name)
        attrs = {t.pk}
        keys = [{"AttributeName": t.pk, "KeyType": "HASH"}]
        if t.sk:
            attrs.add(t.sk)
            keys.append({"AttributeName": t.sk, "KeyType": "RANGE"})
        gsis = []
        for index, gpk, gsk in t.gsis:
            attrs.add(gpk)
            schema = [{"AttributeName": gpk, "KeyType": "HASH"}]
            if gsk:
                attrs.add(gsk)
                schema.append({"AttributeName": gsk, "KeyType": "RANGE"})
            gsis.append({"IndexName": index, "KeySchema": schema, "Projection": {"ProjectionType": "ALL"}})
        args: dict[str, Any] = {
            "TableName": name, "KeySchema": keys, "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in sorted(attrs)],
        }
        if gsis:
            args["GlobalSecondaryIndexes"] = gsis
        try:
            ddb.create_table(**args)
        except ddb.exceptions.ResourceInUseException:
            pass
        if t.ttl_attribute:
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True,
                                                                              "AttributeName": t.ttl_attribute})
        env[table_env(t.name)] = name

    queue_arns: dict[str, str] = {}
    for q in topology.queues:
        name = physical_name(stage, q.name)
        attributes = {"VisibilityTimeout": str(q.visibility_timeout_s)}
        if q.dlq:
            dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
            dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": dlq_arn,
                                                      "maxReceiveCount": str(q.max_receive_count)})
            env[queue_env(q.name + "_dlq")] = dlq_url
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        queue_arns[q.name] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        env[queue_env(q.name)] = url

    bus = physical_name(stage, topology.bus)
    try:
        events.create_event_bus(Name=bus)
    except events.exceptions.ResourceAlreadyExistsException:
        pass
    env[BUS_ENV] = bus
    for rule in topology.event_rules:
        pattern = {"source": [rule.source], "detail-type": list(rule.detail_types)}
        rule_name = physical_name(stage, rule.name)
        events.put_rule(Name=rule_name, EventBusName=bus, EventPattern=json.dumps(pattern), State="ENABLED")
        events.put_targets(Rule=rule_name, EventBusName=bus,
                           Targets=[{"Id": rule.target_queue, "Arn": queue_arns[rule.target_queue]}])
    s3 = boto3.client("s3", **kw)
    for b in getattr(topology, "buckets", ()):
        name = physical_name(stage, b.name)
        try:
            s3.create_bucket(Bucket=name)
        except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
            pass
        if getattr(b, "versioned", False):
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        env[getattr(b, "variable", None) or bucket_env(b.name)] = name
    # Secrets: the name is what functions read; their contents are bootstrapped by their owners
    # (e.g. ig3.identity.tokens.ensure_signing_secret for the JWT signing keys).
    for secret in getattr(topology, "secrets", ()):
        env[secret.env] = physical_name(stage, secret.name)
    return env
