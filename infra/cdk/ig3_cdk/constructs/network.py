"""The VPC for the functions that use Redis: isolated subnets, VPC endpoints, NAT only if declared.

Why: ElastiCache lives in a VPC, so its clients do too. Their AWS traffic goes through VPC
endpoints (DynamoDB and S3 gateways are free; SQS, EventBridge, IoT data, SageMaker runtime,
Secrets Manager and X-Ray are interface endpoints), so it needs no NAT and never leaves the AWS
network. Only a VPC function whose topology entry says ``internet=True`` (chain RPC, model
providers outside AWS) runs in private subnets with a NAT route — one NAT gateway in dev, one per
AZ in prod — and only then does the VPC get public subnets at all.

IoT data endpoints do not support private DNS: a private hosted zone for boto3's default
``iot-data`` host (``data-ats.iot.<region>.amazonaws.com``) aliases it onto the endpoint, so
handlers publish privately without code changes, and the IoT control plane's own names are not
shadowed.
"""
from __future__ import annotations

from aws_cdk import Aws, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_route53_targets as targets
from constructs import Construct

from ig3_cdk.settings import StageSettings

INTERFACE_ENDPOINTS = {
    "Sqs": ec2.InterfaceVpcEndpointAwsService.SQS,
    "Events": ec2.InterfaceVpcEndpointAwsService.EVENTBRIDGE,
    "SageMakerRuntime": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_RUNTIME,
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "XRay": ec2.InterfaceVpcEndpointAwsService.XRAY,
}
REDIS_PORT = 6379
REDIS_READER_PORT = 6380  # ElastiCache Serverless serves reads from replicas on 6380


class Network(Construct):
    def __init__(self, scope: Construct, id: str, *, settings: StageSettings, egress: bool = False):
        super().__init__(scope, id)
        subnet_configuration = [ec2.SubnetConfiguration(name="isolated", cidr_mask=22,
                                                        subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)]
        if egress:
            subnet_configuration += [
                ec2.SubnetConfiguration(name="public", cidr_mask=26, subnet_type=ec2.SubnetType.PUBLIC,
                                        map_public_ip_on_launch=False),
                ec2.SubnetConfiguration(name="egress", cidr_mask=22,
                                        subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)]
        flow_logs = logs.LogGroup(self, "FlowLogs", retention=logs.RetentionDays.TWO_WEEKS,
                                  removal_policy=RemovalPolicy.DESTROY)
        self.vpc = ec2.Vpc(
            self, "Vpc",
            max_azs=settings.azs,
            nat_gateways=(settings.azs if settings.is_prod else 1) if egress else 0,
            subnet_configuration=subnet_configuration,
            # The default SG is used by nothing; restricting it would need a custom-resource Lambda.
            restrict_default_security_group=False,
            flow_logs={"all": ec2.FlowLogOptions(destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
                                                  traffic_type=ec2.FlowLogTrafficType.ALL)},
        )
        self.subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        self.egress_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS) if egress else None
        self.endpoint_sg = ec2.SecurityGroup(self, "EndpointSg", vpc=self.vpc, allow_all_outbound=False,
                                             description="VPC interface endpoints: HTTPS from the VPC functions only")
        self.cache_sg = ec2.SecurityGroup(self, "CacheSg", vpc=self.vpc, allow_all_outbound=False,
                                          description="ElastiCache Serverless: Redis/Valkey from its clients only")
        self.clients_sg = ec2.SecurityGroup(self, "CacheClientsSg", vpc=self.vpc, allow_all_outbound=False,
                                            description="Functions that use Redis: cache + AWS endpoints only")
        for port in (REDIS_PORT, REDIS_READER_PORT):
            self.cache_sg.add_ingress_rule(self.clients_sg, ec2.Port.tcp(port), "Redis from its clients")
            self.clients_sg.add_egress_rule(self.cache_sg, ec2.Port.tcp(port), "Redis")
        # HTTPS to the interface endpoints and gateway endpoints (AWS prefix lists). Isolated subnets
        # have no internet route, so there 443 reaches only AWS; in egress subnets also the internet.
        self.clients_sg.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "AWS APIs via VPC endpoints")
        self.endpoint_sg.add_ingress_rule(self.clients_sg, ec2.Port.tcp(443), "HTTPS from the VPC functions")

        self.vpc.add_gateway_endpoint("DynamoDb", service=ec2.GatewayVpcEndpointAwsService.DYNAMODB)
        self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        self.endpoints: dict[str, ec2.InterfaceVpcEndpoint] = {}
        for name, service in INTERFACE_ENDPOINTS.items():
            self.endpoints[name] = self.vpc.add_interface_endpoint(
                name, service=service, subnets=self.subnets, security_groups=[self.endpoint_sg], open=False,
                private_dns_enabled=True)
        iot = self.vpc.add_interface_endpoint(
            "IotData", service=ec2.InterfaceVpcEndpointAwsService.IOT_CORE, subnets=self.subnets,
            security_groups=[self.endpoint_sg], open=False, private_dns_enabled=False)
        self.endpoints["IotData"] = iot
        host = f"data-ats.iot.{Aws.REGION}.{Aws.URL_SUFFIX}"
        zone = route53.PrivateHostedZone(self, "IotDataZone", vpc=self.vpc, zone_name=host)
        route53.ARecord(self, "IotDataRecord", zone=zone,
                        target=route53.RecordTarget.from_alias(targets.InterfaceVpcEndpointTarget(iot)))
