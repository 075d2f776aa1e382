"""The stateless stack: code and the edges that route to it — all replaceable on any deploy.

Functions (layers, roles, triggers, schedules), the REST API and its authorizer, IoT rules, the
thing group and device policy, the Greengrass component and deployment, the SageMaker fallback,
alarms and the CloudWatch dashboard, the web dashboard on S3 + CloudFront. Everything reads the
stateful stack's resources by reference.
"""
from __future__ import annotations

from aws_cdk import Aws, CfnOutput, Fn, Stack, Tags
from constructs import Construct

from ig3.topology import Topology
from ig3_cdk.constructs.api import Api
from ig3_cdk.constructs.dashboard import Dashboard
from ig3_cdk.constructs.functions import Functions
from ig3_cdk.constructs.greengrass import EdgeComponent
from ig3_cdk.constructs.iot import IotFleet
from ig3_cdk.constructs.monitoring import Monitoring
from ig3_cdk.constructs.sagemaker import CloudFallback
from ig3_cdk.packaging import Packager
from ig3_cdk.settings import StageSettings
from ig3_cdk.stateful import StatefulStack


class StatelessStack(Stack):
    def __init__(self, scope: Construct, id: str, *, topology: Topology, settings: StageSettings,
                 stateful: StatefulStack, **kwargs):
        super().__init__(scope, id, description=f"ig3-gateway {settings.stage}: functions, API, IoT, edge, fallback",
                         **kwargs)
        Tags.of(self).add("ig3:stage", settings.stage)
        self.packager = Packager(machine=settings.machine, mode=settings.bundle_mode)
        self.fallback = CloudFallback(self, "CloudFallback", settings=settings, vpc=stateful.network.vpc,
                                      subnets=stateful.network.subnets) if settings.sagemaker else None
        self.edge_tes_alias = f"ig3-{settings.stage}-tes"
        self.iot = IotFleet(self, "Iot", rules=topology.iot_rules, queues=stateful.messaging.queues,
                            dlqs=stateful.messaging.dlqs, settings=settings,
                            token_exchange_role_alias=self.edge_tes_alias)
        self.compute = Functions(
            self, "Functions", topology=topology, settings=settings, stateful=stateful, packager=self.packager,
            public_host=settings.public_host or "",
            iot_thing_group=self.iot.thing_group_name, iot_device_policy=self.iot.device_policy_name,
            # The stack's own endpoint, else an existing one named in context (ig3:sagemaker-endpoint).
            sagemaker_endpoint=self.fallback.endpoint_name if self.fallback else settings.sagemaker_endpoint)
        if self.fallback:
            for fn in topology.functions:
                if fn.invokes_sagemaker:
                    self.compute.functions[fn.name].node.add_dependency(self.fallback.endpoint)
        self.api = Api(self, "Api", topology=topology, functions=self.compute.functions, settings=settings)
        if topology.iot_authorizer:
            self.iot.add_client_authorizer(self.compute.functions[topology.iot_authorizer], settings)
            CfnOutput(self, "IotClientAuthorizer", value=self.iot.client_authorizer_name)
        # The dashboard's static files on S3 + CloudFront, the API as its /v1/* origin.
        self.dashboard = Dashboard(self, "Dashboard", api=self.api.api, settings=settings,
                                   iot_client_authorizer=self.iot.client_authorizer_name
                                   if topology.iot_authorizer else None)
        if not settings.public_host:
            # SIWE's domain is the API's own host unless a custom domain is configured.
            host = Fn.join("", [self.api.api.rest_api_id, ".execute-api.", Aws.REGION, ".", Aws.URL_SUFFIX])
            for fn in self.compute.functions.values():
                fn.add_environment("IG3_PUBLIC_HOST", host)
        self.edge = EdgeComponent(self, "Edge", thing_group_arn=self.iot.thing_group.attr_arn, settings=settings)
        self.monitoring = Monitoring(self, "Monitoring", functions=self.compute.functions,
                                     queues=stateful.messaging.queues, dlqs=stateful.messaging.dlqs,
                                     api=self.api.api, settings=settings)
        CfnOutput(self, "ApiUrl", value=self.api.url)
        CfnOutput(self, "ThingGroup", value=self.iot.thing_group_name)
        CfnOutput(self, "DevicePolicy", value=self.iot.device_policy_name)
        CfnOutput(self, "EdgeComponent", value=f"{self.edge.component_name}@{self.edge.component_version}")
        if self.fallback:
            CfnOutput(self, "FallbackEndpoint", value=self.fallback.endpoint_name)
