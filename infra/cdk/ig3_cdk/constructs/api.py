"""API Gateway REST API built from the topology's routes.

- One REQUEST authorizer (the topology's ``authorizer`` function) for every route whose auth is
  not ``none``. Its policy covers every route the principal's kind may call, so caching by the
  ``Authorization`` header alone cannot leak one route's answer to another.
- Request validation (parameters always; JSON-object bodies on POST/PUT/PATCH), stage throttling,
  JSON access logs, execution logs at ERROR without data tracing (no bodies, tokens or prompts in
  logs), X-Ray tracing.
- Gateway-generated errors (401/403/429, validation, 5xx) answer in the one error shape
  ``{"error": {"type", "message", "code"}}`` like the functions do.
- Routes to ``package="image"`` functions (the llm ASGI app) use response streaming.
"""
from __future__ import annotations


from aws_cdk import Acknowledgment, Duration, RemovalPolicy, Validations
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from ig3.topology import Topology
from ig3_cdk.constructs.functions import retention
from ig3_cdk.settings import StageSettings

BODY_METHODS = ("POST", "PUT", "PATCH")
STREAM_TIMEOUT = Duration.minutes(15)  # streaming integrations may hold a response up to 15 min

# (response type, status, error type, code) — types/codes as in ig3.errors
GATEWAY_ERRORS = (
    (apigw.ResponseType.UNAUTHORIZED, "401", "authentication_error", "unauthorized"),
    (apigw.ResponseType.ACCESS_DENIED, "403", "permission_error", "forbidden"),
    (apigw.ResponseType.THROTTLED, "429", "rate_limit_error", "rate_limited"),
    (apigw.ResponseType.BAD_REQUEST_BODY, "400", "invalid_request_error", "bad_request"),
    (apigw.ResponseType.BAD_REQUEST_PARAMETERS, "400", "invalid_request_error", "bad_request"),
    (apigw.ResponseType.REQUEST_TOO_LARGE, "413", "invalid_request_error", "payload_too_large"),
    (apigw.ResponseType.MISSING_AUTHENTICATION_TOKEN, "404", "not_found_error", "unknown_route"),
    (apigw.ResponseType.DEFAULT_4_XX, None, "invalid_request_error", "bad_request"),
    (apigw.ResponseType.DEFAULT_5_XX, None, "api_error", "internal_error"),
)


def _error_template(error_type: str, code: str) -> str:
    # $context.error.messageString is already a quoted JSON string.
    return ('{"error": {"type": "%s", "message": $context.error.messageString, "code": "%s"}}'
            % (error_type, code))


class Api(Construct):
    def __init__(self, scope: Construct, id: str, *, topology: Topology, functions: dict[str, lambda_.IFunction],
                 settings: StageSettings):
        super().__init__(scope, id)
        access_logs = logs.LogGroup(self, "AccessLogs", retention=retention(settings.log_retention_days),
                                    removal_policy=RemovalPolicy.RETAIN if settings.retain_data
                                    else RemovalPolicy.DESTROY)
        self.api = apigw.RestApi(
            self, "Api",
            description=f"ig3 gateway ({settings.stage})",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=RemovalPolicy.DESTROY,
            deploy_options=apigw.StageOptions(
                stage_name=settings.stage,
                throttling_rate_limit=settings.throttle_rate,
                throttling_burst_limit=settings.throttle_burst,
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=False, http_method=True, ip=True, protocol=True, request_time=True,
                    resource_path=True, response_length=True, status=True, user=False),
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,
                metrics_enabled=True,
                tracing_enabled=True,
            ),
        )
        Validations.of(self.api).acknowledge(Acknowledgment(
            id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
               "AmazonAPIGatewayPushToCloudWatchLogs]",
            reason="the account-level role API Gateway needs for execution logs; AWS-maintained, logs only"))
        waf_acl = settings.waf_acl_arn
        if waf_acl:
            wafv2.CfnWebACLAssociation(self, "Waf", web_acl_arn=waf_acl,
                                       resource_arn=self.api.deployment_stage.stage_arn)
        else:
            Validations.of(self.api.deployment_stage).acknowledge(Acknowledgment(
                id="AwsSolutions-APIG3",
                reason="a WAF web ACL is an operator choice (-c ig3:waf-acl-arn=... associates one); without it "
                       "stage throttling and the authorizer bound abuse"))
        self.validator = self.api.add_request_validator("Validator", validate_request_body=True,
                                                        validate_request_parameters=True)
        self.json_object = self.api.add_model("JsonObject", content_type="application/json",
                                              schema=apigw.JsonSchema(schema=apigw.JsonSchemaVersion.DRAFT4,
                                                                      type=apigw.JsonSchemaType.OBJECT))
        for response_type, status, error_type, code in GATEWAY_ERRORS:
            self.api.add_gateway_response(
                f"Gateway{response_type.response_type}", type=response_type, status_code=status,
                templates={"application/json": _error_template(error_type, code)})

        self.authorizer = None
        if any(r.auth != "none" for r in topology.routes):
            if not topology.authorizer:
                raise ValueError("routes require auth but the topology declares no authorizer function")
            self.authorizer = apigw.RequestAuthorizer(
                self, "Authorizer", handler=functions[topology.authorizer],
                identity_sources=[apigw.IdentitySource.header("Authorization")],
                results_cache_ttl=Duration.seconds(settings.authorizer_cache_s))

        image_functions = {f.name for f in topology.functions if f.package == "image"}
        integrations: dict[str, apigw.LambdaIntegration] = {}
        self.methods: dict[tuple[str, str], apigw.Method] = {}
        for route in topology.routes:
            if route.function not in integrations:
                streaming = route.function in image_functions
                integrations[route.function] = apigw.LambdaIntegration(
                    functions[route.function], proxy=True,
                    # One resource-policy statement per function instead of one per method: the
                    # Lambda policy size limit would otherwise cap the number of routes.
                    scope_permission_to_method=False,
                    response_transfer_mode=apigw.ResponseTransferMode.STREAM if streaming else None,
                    timeout=STREAM_TIMEOUT if streaming else None)
            resource = self.api.root.resource_for_path(route.path)
            params = {f"method.request.path.{p[1:-1]}": True for p in route.path.split("/")
                      if p.startswith("{") and p.endswith("}")}
            public = route.auth == "none"
            method = resource.add_method(
                route.method, integrations[route.function],
                authorization_type=apigw.AuthorizationType.NONE if public else apigw.AuthorizationType.CUSTOM,
                authorizer=None if public else self.authorizer,
                request_validator=self.validator,
                request_parameters=params or None,
                request_models={"application/json": self.json_object} if route.method in BODY_METHODS else None,
            )
            if public:
                Validations.of(method).acknowledge(
                    Acknowledgment(id="AwsSolutions-APIG4",
                                   reason=f"{route.method} {route.path} is public by design (topology auth=none): "
                                          "it is a step of signing in"),
                    Acknowledgment(id="AwsSolutions-COG4",
                                   reason=f"{route.method} {route.path} is public by design (sign-in step)"))
            else:
                Validations.of(method).acknowledge(Acknowledgment(
                    id="AwsSolutions-COG4",
                    reason="principals are wallets (SIWE), DIDs and API keys, verified by the Lambda REQUEST "
                           "authorizer; Cognito user pools cannot verify those signatures"))
            self.methods[(route.method, route.path)] = method
        self.url = self.api.url
