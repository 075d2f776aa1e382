"""The SageMaker cloud fallback: model, endpoint config, endpoint.

Container image, model, instance type and the tensor-parallel degree are stage settings: the
tensor-parallel degree is how many GPUs of one instance the model is sharded across (the seed's
"model sharding"), passed to the LMI/vLLM container as ``OPTION_TENSOR_PARALLEL_DEGREE``. The
LMI container serves the OpenAI messages schema, so the llm function's pooled client speaks to
it without LiteLLM.

Security posture: when the model's weights come from S3 (``s3://...``) the container runs with
network isolation inside the VPC's isolated subnets, reading weights through the S3 gateway
endpoint. A Hugging Face model id needs the Hub at start-up, so that configuration runs outside
the VPC without network isolation — acknowledged below with that reason.
"""
from __future__ import annotations

from aws_cdk import Acknowledgment, ArnFormat, Aws, Fn, Stack, Validations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from ig3_cdk.settings import StageSettings


class CloudFallback(Construct):
    def __init__(self, scope: Construct, id: str, *, settings: StageSettings, vpc: ec2.IVpc,
                 subnets: ec2.SubnetSelection):
        super().__init__(scope, id)
        stack = Stack.of(self)
        from_s3 = settings.sagemaker_model.startswith("s3://")
        self.endpoint_name = f"ig3-{settings.stage}-fallback"
        role = iam.Role(self, "ExecutionRole", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
                        description="ig3 SageMaker fallback: pull its image, read its weights, write logs/metrics")
        image = Fn.sub(settings.sagemaker_image)
        registry_account = settings.sagemaker_image.split(".", 1)[0]
        repository = settings.sagemaker_image.split("/", 1)[1].split(":", 1)[0] if "/" in settings.sagemaker_image \
            else "*"
        role.add_to_policy(iam.PolicyStatement(
            actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            resources=[f"arn:{Aws.PARTITION}:ecr:{Aws.REGION}:{registry_account}:repository/{repository}"]))
        role.add_to_policy(iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]))
        role.add_to_policy(iam.PolicyStatement(
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[stack.format_arn(service="logs", resource="log-group",
                                        resource_name="/aws/sagemaker/Endpoints/*",
                                        arn_format=ArnFormat.COLON_RESOURCE_NAME)]))
        role.add_to_policy(iam.PolicyStatement(
            actions=["cloudwatch:PutMetricData"], resources=["*"],
            conditions={"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "ig3*"]}}))
        acks = [
            Acknowledgment(id="AwsSolutions-IAM5[Resource::*]",
                           reason="ecr:GetAuthorizationToken and cloudwatch:PutMetricData (namespace-conditioned) "
                                  "have no resource-level permissions"),
            Acknowledgment(id="AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:"
                              "<AWS::AccountId>:log-group:/aws/sagemaker/Endpoints/*]",
                           reason="SageMaker names the endpoint's log group itself under /aws/sagemaker/Endpoints/"),
        ]
        if repository == "*":
            acks.append(Acknowledgment(id="AwsSolutions-IAM5[Resource::*]", reason="custom image without a repository"))
        container = sagemaker.CfnModel.ContainerDefinitionProperty(
            image=image,
            environment={
                "OPTION_TENSOR_PARALLEL_DEGREE": str(settings.sagemaker_tp_degree),
                "OPTION_ROLLING_BATCH": "vllm",
                "OPTION_MAX_ROLLING_BATCH_SIZE": "64",
                **({"HF_MODEL_ID": settings.sagemaker_model} if not from_s3 else {}),
            },
            model_data_source=sagemaker.CfnModel.ModelDataSourceProperty(
                s3_data_source=sagemaker.CfnModel.S3DataSourceProperty(
                    s3_uri=settings.sagemaker_model if settings.sagemaker_model.endswith("/")
                    else settings.sagemaker_model + "/",
                    s3_data_type="S3Prefix", compression_type="None")) if from_s3 else None,
        )
        vpc_config = None
        if from_s3:
            bucket = settings.sagemaker_model[len("s3://"):].split("/", 1)[0]
            prefix = settings.sagemaker_model[len("s3://") + len(bucket):].strip("/")
            role.add_to_policy(iam.PolicyStatement(
                actions=["s3:GetObject", "s3:ListBucket"],
                resources=[f"arn:{Aws.PARTITION}:s3:::{bucket}", f"arn:{Aws.PARTITION}:s3:::{bucket}/{prefix}/*"]))
            sg = ec2.SecurityGroup(self, "ModelSg", vpc=vpc, allow_all_outbound=False,
                                   description="SageMaker fallback model: no inbound, HTTPS to AWS endpoints")
            sg.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "S3 gateway / AWS endpoints")
            role.add_to_policy(iam.PolicyStatement(
                actions=["ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission",
                         "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission",
                         "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs", "ec2:DescribeDhcpOptions",
                         "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"], resources=["*"]))
            acks.append(Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::{bucket}/{prefix}/*]",
                reason="the model's weights are every object under its S3 prefix"))
            vpc_config = sagemaker.CfnModel.VpcConfigProperty(
                security_group_ids=[sg.security_group_id],
                subnets=vpc.select_subnets(subnet_type=subnets.subnet_type).subnet_ids)
        Validations.of(role).acknowledge(*acks)
        self.model = sagemaker.CfnModel(
            self, "Model", execution_role_arn=role.role_arn, primary_container=container,
            enable_network_isolation=from_s3, vpc_config=vpc_config)
        self.model.node.add_dependency(role)
        if not from_s3:
            Validations.of(self.model).acknowledge(
                Acknowledgment(id="AwsSolutions-SM1",
                               reason="weights are fetched from the Hugging Face Hub at start-up (ig3:sagemaker-model "
                                      "is a Hub id); set it to an s3:// prefix to run in the VPC"),
                Acknowledgment(id="AwsSolutions-SM3",
                               reason="network isolation would block the Hub download; s3:// models run isolated"))
        self.key = kms.Key(self, "EndpointKey", enable_key_rotation=True,
                           description="ig3 SageMaker fallback: endpoint storage volume encryption")
        self.config = sagemaker.CfnEndpointConfig(
            self, "Config", kms_key_id=self.key.key_arn,
            production_variants=[sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                variant_name="primary", model_name=self.model.attr_model_name,
                instance_type=settings.sagemaker_instance, initial_instance_count=settings.sagemaker_count,
                initial_variant_weight=1.0,
                container_startup_health_check_timeout_in_seconds=1800,
                model_data_download_timeout_in_seconds=1800)])
        self.endpoint = sagemaker.CfnEndpoint(self, "Endpoint", endpoint_config_name=self.config.attr_endpoint_config_name,
                                              endpoint_name=self.endpoint_name)

