"""The dashboard as static files: a private S3 bucket behind CloudFront, the API on the same origin.

- One origin for page and API: CloudFront serves ``/dashboard/*`` from the bucket (Origin Access
  Control; the bucket stays private with every public-access block on) and forwards ``/v1/*`` to
  the REST API stage — so the page's relative ``fetch("/v1/...")`` calls need no CORS. The API
  behaviour caches nothing, allows every method and forwards every viewer header except ``Host``
  (API Gateway routes on its own host name), ``Authorization`` included.
- ``config.json`` is generated at deploy time (``Source.json_data``), never taken from the
  repository's local copy: ``{"transport": "mqtt", "url": "wss://<iot data endpoint>/mqtt",
  "authorizer": "<custom authorizer name>"}`` — the keys ``app.js`` reads. The account's IoT data
  endpoint is only known at deploy time, so a custom resource asks ``iot:DescribeEndpoint``.
- A response-headers policy on every behaviour: CSP ``default-src 'self'`` with ``connect-src``
  opening exactly the region's IoT endpoints over ``wss:`` (the page makes no other third-party
  request), HSTS, nosniff, ``frame-ancestors 'none'`` / X-Frame-Options DENY, no referrer.
- HTTPS only (viewers redirected). TLSv1.2_2021 as the minimum needs a certificate of our own:
  ``-c ig3:dashboard-domain=… -c ig3:dashboard-cert-arn=…`` (ACM, us-east-1); without one the
  distribution answers on its ``*.cloudfront.net`` name, whose TLS policy CloudFront fixes.
- Synth stays offline: BucketDeployment and AwsCustomResource run handlers shipped inside
  aws-cdk-lib (and the AWS CLI layer asset package); nothing is built with Docker.
"""
from __future__ import annotations

from pathlib import Path

from aws_cdk import Acknowledgment, Aws, CfnOutput, Duration, RemovalPolicy, Stack, Validations
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3deploy
from aws_cdk import custom_resources as cr
from constructs import Construct

import ig3
from ig3_cdk.settings import StageSettings

DASHBOARD_DIR = Path(ig3.__file__).resolve().parent / "dashboard"
PREFIX = "dashboard"
AWS_CUSTOM_RESOURCE_SINGLETON = "AWS679f53fac002430cb0da5b7982bd2287"  # AwsCustomResource's provider id

# `/` -> `/dashboard/`, `/dashboard` -> `/dashboard/`, `/dashboard/` -> its index.html: S3 has no
# directory index behind an OAC origin (the REST endpoint answers 403 for a "folder" key).
INDEX_FUNCTION = """
function handler(event) {
  var request = event.request;
  var uri = request.uri;
  if (uri === "/" || uri === "/dashboard") {
    return { statusCode: 301, statusDescription: "Moved Permanently",
             headers: { location: { value: "/dashboard/" } } };
  }
  if (uri.endsWith("/")) { request.uri = uri + "index.html"; }
  return request;
}
"""


def content_security_policy(region: str) -> str:
    """The page loads only its own files; live data comes from the API (same origin) or IoT Core."""
    return "; ".join((
        "default-src 'self'",
        f"connect-src 'self' wss://*.iot.{region}.amazonaws.com",
        "img-src 'self' data:",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ))


class Dashboard(Construct):
    def __init__(self, scope: Construct, id: str, *, api: apigw.RestApi, settings: StageSettings,
                 iot_client_authorizer: str | None):
        super().__init__(scope, id)
        # S3 delivers the site bucket's access logs under a bucket policy (scoped to the source
        # bucket and account), not the legacy LogDeliveryWrite ACL; CDK's flag, set for this subtree.
        self.node.set_context("@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy", True)
        removal = RemovalPolicy.RETAIN if settings.retain_data else RemovalPolicy.DESTROY
        # Server access logs of the site bucket and CloudFront's standard logs; CloudFront's log
        # delivery writes with ACLs, hence BUCKET_OWNER_PREFERRED rather than ACLs disabled.
        self.log_bucket = s3.Bucket(
            self, "Logs",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(settings.log_retention_days or 90))],
            removal_policy=removal,
            auto_delete_objects=not settings.retain_data,
        )
        Validations.of(self.log_bucket).acknowledge(Acknowledgment(
            id="AwsSolutions-S1",
            reason="this is the access-log bucket itself; logging it into another bucket would only "
                   "move the question one bucket further"))
        self.bucket = s3.Bucket(
            self, "Site",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,  # SSE-KMS would need the key shared with CloudFront
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.log_bucket,
            server_access_logs_prefix="s3/",
            # Older versions only matter for a quick rollback; the repository holds the history.
            lifecycle_rules=[s3.LifecycleRule(noncurrent_version_expiration=Duration.days(30))],
            removal_policy=removal,
            auto_delete_objects=not settings.retain_data,
        )

        self.headers = cloudfront.ResponseHeadersPolicy(
            self, "SecurityHeaders",
            comment=f"ig3 {settings.stage} dashboard: CSP (self + IoT wss), HSTS, no framing",
            security_headers_behavior=cloudfront.ResponseSecurityHeadersBehavior(
                content_security_policy=cloudfront.ResponseHeadersContentSecurityPolicy(
                    content_security_policy=content_security_policy(Aws.REGION), override=True),
                strict_transport_security=cloudfront.ResponseHeadersStrictTransportSecurity(
                    access_control_max_age=Duration.days(365), include_subdomains=True, override=True),
                content_type_options=cloudfront.ResponseHeadersContentTypeOptions(override=True),
                frame_options=cloudfront.ResponseHeadersFrameOptions(
                    frame_option=cloudfront.HeadersFrameOption.DENY, override=True),
                referrer_policy=cloudfront.ResponseHeadersReferrerPolicy(
                    referrer_policy=cloudfront.HeadersReferrerPolicy.NO_REFERRER, override=True),
            ),
        )
        index = cloudfront.Function(
            self, "Index", code=cloudfront.FunctionCode.from_inline(INDEX_FUNCTION),
            runtime=cloudfront.FunctionRuntime.JS_2_0,
            comment="directory index and / -> /dashboard/ for the S3 origin")
        site_origin = origins.S3BucketOrigin.with_origin_access_control(self.bucket)
        site = cloudfront.BehaviorOptions(
            origin=site_origin,
            viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
            allowed_methods=cloudfront.AllowedMethods.ALLOW_GET_HEAD_OPTIONS,
            cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
            response_headers_policy=self.headers,
            compress=True,
            function_associations=[cloudfront.FunctionAssociation(
                function=index, event_type=cloudfront.FunctionEventType.VIEWER_REQUEST)],
        )
        api_behavior = cloudfront.BehaviorOptions(
            origin=origins.RestApiOrigin(api),
            viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
            allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
            # Nothing cached: answers depend on the caller. With caching disabled, the all-viewer
            # origin request policy forwards Authorization too; Host must stay API Gateway's.
            cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
            origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
            response_headers_policy=self.headers,
            compress=True,
        )

        domain = scope.node.try_get_context("ig3:dashboard-domain")
        cert_arn = scope.node.try_get_context("ig3:dashboard-cert-arn")
        certificate = (acm.Certificate.from_certificate_arn(self, "Certificate", cert_arn)
                       if domain and cert_arn else None)
        self.distribution = cloudfront.Distribution(
            self, "Distribution",
            comment=f"ig3 {settings.stage} dashboard + API",
            default_behavior=site,
            additional_behaviors={f"/{PREFIX}/*": site, "/v1/*": api_behavior},
            http_version=cloudfront.HttpVersion.HTTP2_AND_3,
            minimum_protocol_version=cloudfront.SecurityPolicyProtocol.TLS_V1_2_2021,
            certificate=certificate,
            domain_names=[domain] if certificate else None,
            price_class=cloudfront.PriceClass.PRICE_CLASS_100,
            enable_logging=True,
            log_bucket=self.log_bucket,
            log_file_prefix="cloudfront/",
        )
        if certificate is None:
            Validations.of(self.distribution).acknowledge(Acknowledgment(
                id="AwsSolutions-CFR4",
                reason="without -c ig3:dashboard-domain/-cert-arn the distribution uses the default "
                       "*.cloudfront.net certificate, whose TLS policy CloudFront fixes; with a "
                       "certificate of our own the minimum is TLSv1.2_2021"))
        Validations.of(self.distribution).acknowledge(
            Acknowledgment(
                id="AwsSolutions-CFR1",
                reason="the network is global by design: devices and users in every country; no geo "
                       "restriction is wanted"),
            Acknowledgment(
                id="AwsSolutions-CFR2",
                reason="the static files carry no data; the API behind /v1/* has its own throttling and "
                       "an optional WAF ACL on its stage (-c ig3:waf-acl-arn)"),
        )

        self.iot_endpoint = cr.AwsCustomResource(
            self, "IotEndpoint",
            on_update=cr.AwsSdkCall(
                service="Iot", action="describeEndpoint", parameters={"endpointType": "iot:Data-ATS"},
                physical_resource_id=cr.PhysicalResourceId.of("iot-data-ats-endpoint")),
            policy=cr.AwsCustomResourcePolicy.from_sdk_calls(
                resources=cr.AwsCustomResourcePolicy.ANY_RESOURCE),
            install_latest_aws_sdk=False,
        )
        self.config = {"transport": "mqtt",
                       "url": f"wss://{self.iot_endpoint.get_response_field('endpointAddress')}/mqtt"}
        if iot_client_authorizer:
            self.config["authorizer"] = iot_client_authorizer

        self.deployment = s3deploy.BucketDeployment(
            self, "Files",
            sources=[s3deploy.Source.asset(str(DASHBOARD_DIR), exclude=["config.json"]),
                     s3deploy.Source.json_data("config.json", self.config)],
            destination_bucket=self.bucket,
            destination_key_prefix=f"{PREFIX}/",
            distribution=self.distribution,
            distribution_paths=[f"/{PREFIX}/*"],
            memory_limit=256,
        )
        self._acknowledge_provider_functions()
        self.url = f"https://{domain}/{PREFIX}/" if certificate else \
            f"https://{self.distribution.distribution_domain_name}/{PREFIX}/"
        CfnOutput(self, "Url", value=self.url)

    def _acknowledge_provider_functions(self) -> None:
        """The CDK-owned handlers (file copy, endpoint lookup) — their code and grants are CDK's.

        Both are stack-level singletons (one per stack whatever the number of deployments), so the
        acknowledgments go on them, found by the ids CDK gives them.
        """
        stack = Stack.of(self)
        copier = [c for c in stack.node.children if c.node.id.startswith("Custom::CDKBucketDeployment")]
        lookup = [c for c in stack.node.children if c.node.id == AWS_CUSTOM_RESOURCE_SINGLETON]
        basic = Acknowledgment(
            id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
               "AWSLambdaBasicExecutionRole]",
            reason="CDK's own deployment/lookup handler writes only its CloudWatch logs with the "
                   "AWS-maintained basic execution policy")
        for handler in lookup:
            Validations.of(handler).acknowledge(basic)
        for handler in copier:
            copy_grants = [Acknowledgment(
                id=f"AwsSolutions-IAM5[{what}]",
                reason="BucketDeployment's copy handler: reads the CDK asset objects and syncs (puts, "
                       "deletes, lists) the dashboard objects under the site bucket — CDK's grant, "
                       "scoped to those two buckets") for what in (
                "Action::s3:GetObject*", "Action::s3:GetBucket*", "Action::s3:List*",
                "Action::s3:DeleteObject*", "Action::s3:Abort*",
                "Resource::arn:<AWS::Partition>:s3:::cdk-hnb659fds-assets-<AWS::AccountId>-<AWS::Region>/*",
                f"Resource::<{stack.get_logical_id(self.bucket.node.default_child)}.Arn>/*")]
            Validations.of(handler).acknowledge(
                basic, *copy_grants,
                Acknowledgment(
                    id="AwsSolutions-IAM5[Resource::*]",
                    reason="cloudfront:CreateInvalidation after each copy (the handler's CDK grant; "
                           "the distribution id is only known at deploy time)"),
                Acknowledgment(
                    id="AwsSolutions-L1",
                    reason="CDK pins the BucketDeployment handler's runtime with the aws-cli layer it "
                           "bundles; it moves with aws-cdk-lib upgrades, not something we set"))
        Validations.of(self.iot_endpoint).acknowledge(Acknowledgment(
            id="AwsSolutions-IAM5[Resource::*]",
            reason="iot:DescribeEndpoint has no resource-level permissions; the lookup reads the "
                   "account's IoT data endpoint address and nothing else"))
