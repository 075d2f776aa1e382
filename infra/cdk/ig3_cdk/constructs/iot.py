"""IoT Core: the topology's topic rules -> SQS, the device thing group and the per-device policy.

- Topic rules batch device traffic into SQS (never one Lambda invocation per heartbeat); each
  rule has its own role that may only send to its queue, and an error action into that queue's DLQ.
- The device policy is a *template*: policy variables (``${iot:Connection.Thing.ThingName}``)
  confine every certificate it is attached to to its own client id and its own
  ``ig3/v1/devices/{thing}/...`` topics, plus publishing its tasks' stream chunks and the
  Greengrass v2 nucleus's own thing-scoped topics (jobs, shadows) and credential exchange.
  Registration attaches it to each device certificate; nothing per device lives in CloudFormation.
"""
from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_iot as iot
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ig3.topology import IotRule
from ig3_cdk.settings import StageSettings

THING = "${iot:Connection.Thing.ThingName}"


class IotFleet(Construct):
    def __init__(self, scope: Construct, id: str, *, rules: tuple[IotRule, ...], queues: dict[str, sqs.IQueue],
                 dlqs: dict[str, sqs.IQueue], settings: StageSettings, token_exchange_role_alias: str | None = None):
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.rules: dict[str, iot.CfnTopicRule] = {}
        for rule in rules:
            role = iam.Role(self, f"{rule.name}-role", assumed_by=iam.ServicePrincipal("iot.amazonaws.com"),
                            description=f"IoT rule {rule.name}: send to its queue only")
            queues[rule.target_queue].grant_send_messages(role)
            dlq = dlqs.get(rule.target_queue)
            if dlq is not None:
                dlq.grant_send_messages(role)
            self.rules[rule.name] = iot.CfnTopicRule(
                self, rule.name,
                topic_rule_payload=iot.CfnTopicRule.TopicRulePayloadProperty(
                    sql=rule.sql, aws_iot_sql_version="2016-03-23", rule_disabled=False,
                    description=f"{rule.topic_filter} -> SQS {rule.target_queue}",
                    actions=[iot.CfnTopicRule.ActionProperty(sqs=iot.CfnTopicRule.SqsActionProperty(
                        queue_url=queues[rule.target_queue].queue_url, role_arn=role.role_arn, use_base64=False))],
                    error_action=iot.CfnTopicRule.ActionProperty(sqs=iot.CfnTopicRule.SqsActionProperty(
                        queue_url=dlq.queue_url, role_arn=role.role_arn, use_base64=False)) if dlq else None,
                ))

        self.thing_group_name = f"ig3-{settings.stage}-devices"
        self.thing_group = iot.CfnThingGroup(
            self, "Devices", thing_group_name=self.thing_group_name,
            thing_group_properties=iot.CfnThingGroup.ThingGroupPropertiesProperty(
                thing_group_description="ig3 edge devices (Greengrass v2 core devices)"))

        def arn(resource: str, name: str) -> str:
            return stack.format_arn(service="iot", resource=resource, resource_name=name)

        own = f"ig3/v1/devices/{THING}"
        statements = [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": arn("client", THING),
             "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}},
            {"Effect": "Allow", "Action": "iot:Publish",
             "Resource": [arn("topic", f"{own}/results"), arn("topic", f"{own}/heartbeat"),
                          arn("topic", "ig3/v1/tasks/*/stream"),
                          arn("topic", f"$aws/things/{THING}/*")]},
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": [arn("topicfilter", f"{own}/*"), arn("topicfilter", f"$aws/things/{THING}/*")]},
            {"Effect": "Allow", "Action": "iot:Receive",
             "Resource": [arn("topic", f"{own}/*"), arn("topic", f"$aws/things/{THING}/*")]},
            {"Effect": "Allow", "Action": ["greengrass:GetComponentVersionArtifact",
                                           "greengrass:ResolveComponentCandidates",
                                           "greengrass:GetDeploymentConfiguration",
                                           "greengrass:ListThingGroupsForCoreDevice",
                                           "greengrass:PutCertificateAuthorities",
                                           "greengrass:VerifyClientDeviceIdentity"],
             "Resource": "*"},
        ]
        if token_exchange_role_alias:
            statements.append({"Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate",
                               "Resource": arn("rolealias", token_exchange_role_alias)})
        self.device_policy_name = f"ig3-{settings.stage}-device"
        self.device_policy = iot.CfnPolicy(
            self, "DevicePolicy", policy_name=self.device_policy_name,
            policy_document={"Version": "2012-10-17", "Statement": statements})

    def add_client_authorizer(self, function, settings: StageSettings) -> iot.CfnAuthorizer:
        """IoT Core custom authorizer for clients (MQTT over WebSocket with the API's bearer tokens).

        Signing is disabled because the token itself (a JWT or an API key the function verifies)
        is the credential; IoT Core may invoke only this function, only for this authorizer.
        """
        self.client_authorizer_name = f"ig3-{settings.stage}-clients"
        authorizer = iot.CfnAuthorizer(
            self, "ClientAuthorizer", authorizer_name=self.client_authorizer_name,
            authorizer_function_arn=function.function_arn, signing_disabled=True, status="ACTIVE",
            enable_caching_for_http=False)
        function.add_permission("IotAuthorizerInvoke", principal=iam.ServicePrincipal("iot.amazonaws.com"),
                                source_arn=authorizer.attr_arn)
        self.client_authorizer = authorizer
        return authorizer
