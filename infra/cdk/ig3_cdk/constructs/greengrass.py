"""Greengrass v2: the edge agent as a component version, deployed to the device thing group.

The artifact is exactly what the edge build produces (``ig3_edge.build.build_zip``: the agent,
the shared ``ig3/wire.py`` and ``requirements-edge.lock``, deterministic bytes), uploaded as a
CDK file asset — no Docker, no gdk. The recipe is ``edge/greengrass/recipe.yaml`` when present
(a minimal built-in one otherwise). Two rewrites make it point at the asset: every ``.zip``
artifact URI becomes the asset's S3 URL, and since Greengrass unpacks a zip into a folder named
after the object (``<asset hash>``, not ``ig3-edge-agent``), ``{artifacts:decompressedPath}/<zip
stem>`` becomes ``{artifacts:decompressedPath}/<asset hash>``. Component versions are immutable:
bump ``ComponentVersion`` in the recipe whenever the agent changes.

Devices fetch the artifact with the token exchange role (via its IoT role alias), which may read
exactly that S3 object and write Greengrass logs — nothing else.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from aws_cdk import Acknowledgment, ArnFormat, Stack, Validations
from aws_cdk import aws_greengrassv2 as greengrass
from aws_cdk import aws_iam as iam
from aws_cdk import aws_iot as iot
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from ig3_cdk.packaging import REPO
from ig3_cdk.settings import StageSettings

EDGE_BUILD = REPO / "infra" / "cdk" / "build" / "edge"
ARTIFACT = "ig3-edge-agent.zip"


def minimal_recipe(name: str = "com.ig3.EdgeAgent", version: str = "0.1.0") -> dict:
    """Used only when edge/greengrass/recipe.yaml is absent: install the lock into a venv, run over IPC."""
    return {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": version,
        "ComponentDescription": "ig3 edge agent: runs local models (llama.cpp) for the iG3 network",
        "ComponentPublisher": "iG3",
        "ComponentConfiguration": {"DefaultConfiguration": {"accessControl": {"aws.greengrass.ipc.mqttproxy": {
            f"{name}:mqttproxy:1": {
                "policyDescription": "own device topics and task streams only",
                "operations": ["aws.greengrass#PublishToIoTCore", "aws.greengrass#SubscribeToIoTCore"],
                "resources": ["ig3/v1/devices/{iot:thingName}/*", "ig3/v1/tasks/+/stream"]}}}}},
        "Manifests": [{
            "Platform": {"os": "linux"},
            "Artifacts": [{"URI": f"s3://BUCKET_NAME/{ARTIFACT}", "Unarchive": "ZIP"}],
            "Lifecycle": {
                "install": {"Script": "python3 -m venv {work:path}/venv && {work:path}/venv/bin/python -m pip "
                                      "install --require-hashes -r "
                                      "{artifacts:decompressedPath}/ig3-edge-agent/requirements-edge.lock",
                            "Timeout": 3600},
                "run": {"Script": "exec {work:path}/venv/bin/python -m ig3_edge --transport ipc "
                                  "--thing {iot:thingName}",
                        "Setenv": {"PYTHONPATH": "{artifacts:decompressedPath}/ig3-edge-agent"}},
            },
        }],
    }


def load_recipe(path: Path) -> tuple[dict, bool]:
    if path.is_file():
        return yaml.safe_load(path.read_text()), True
    return minimal_recipe(), False


def edge_zip() -> Path:
    """The edge build's zip, written only when its bytes change (deterministic build)."""
    from ig3_edge.build import build_zip

    data = build_zip()
    EDGE_BUILD.mkdir(parents=True, exist_ok=True)
    path = EDGE_BUILD / ARTIFACT
    if not path.is_file() or path.read_bytes() != data:
        path.write_bytes(data)
    return path


def point_recipe_at(recipe: dict, s3_url: str, folder: str) -> dict:
    """Artifact URIs -> the asset; ``{artifacts:decompressedPath}/<zip stem>`` -> ``.../<folder>``."""
    stems = set()
    for manifest in recipe.get("Manifests", []):
        for artifact in manifest.get("Artifacts", []):
            for key in list(artifact):
                if key.lower() == "uri" and str(artifact[key]).endswith(".zip"):
                    stems.add(str(artifact[key]).rsplit("/", 1)[-1][: -len(".zip")])
                    artifact[key] = s3_url
    text = json.dumps(recipe)
    for stem in stems:
        text = re.sub(r"\{artifacts:decompressedPath\}/" + re.escape(stem) + r"(?=[/\"\s]|$)",
                      "{artifacts:decompressedPath}/" + folder, text)
    return json.loads(text)


class EdgeComponent(Construct):
    def __init__(self, scope: Construct, id: str, *, thing_group_arn: str, settings: StageSettings):
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.artifact = s3_assets.Asset(self, "Artifact", path=str(edge_zip()))
        recipe, from_file = load_recipe(REPO / settings.greengrass_recipe)
        self.recipe_from_file = from_file
        self.component_name = recipe["ComponentName"]
        self.component_version = str(recipe["ComponentVersion"])
        folder = self.artifact.s3_object_key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        recipe = point_recipe_at(recipe, self.artifact.s3_object_url, folder)
        self.component = greengrass.CfnComponentVersion(self, "Component",
                                                        inline_recipe=stack.to_json_string(recipe))

        # Token exchange role: what the nucleus may do with AWS credentials on the device.
        self.tes_role = iam.Role(self, "TokenExchangeRole",
                                 assumed_by=iam.ServicePrincipal("credentials.iot.amazonaws.com"),
                                 description="Greengrass token exchange: fetch the ig3 edge artifact, write logs")
        self.tes_role.add_to_policy(iam.PolicyStatement(
            actions=["s3:GetObject"], resources=[self.artifact.bucket.arn_for_objects(self.artifact.s3_object_key)]))
        self.tes_role.add_to_policy(iam.PolicyStatement(
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[stack.format_arn(service="logs", resource="log-group",
                                        resource_name="/aws/greengrass/*", arn_format=ArnFormat.COLON_RESOURCE_NAME)]))
        Validations.of(self.tes_role).acknowledge(Acknowledgment(
            id="AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:"
               "log-group:/aws/greengrass/*]",
            reason="Greengrass log manager writes one log group per component under /aws/greengrass/"))
        self.role_alias_name = f"ig3-{settings.stage}-tes"
        self.role_alias = iot.CfnRoleAlias(self, "RoleAlias", role_alias=self.role_alias_name,
                                           role_arn=self.tes_role.role_arn, credential_duration_seconds=3600)

        self.deployment = greengrass.CfnDeployment(
            self, "Deployment",
            target_arn=thing_group_arn,
            deployment_name=f"ig3-{settings.stage}-edge-agent",
            components={self.component_name: greengrass.CfnDeployment.ComponentDeploymentSpecificationProperty(
                component_version=self.component.attr_component_version)},
            deployment_policies=greengrass.CfnDeployment.DeploymentPoliciesProperty(
                failure_handling_policy="ROLLBACK",
                component_update_policy=greengrass.CfnDeployment.DeploymentComponentUpdatePolicyProperty(
                    action="NOTIFY_COMPONENTS", timeout_in_seconds=120)),
            iot_job_configuration=greengrass.CfnDeployment.DeploymentIoTJobConfigurationProperty(
                job_executions_rollout_config=greengrass.CfnDeployment.IoTJobExecutionsRolloutConfigProperty(
                    maximum_per_minute=100),
                abort_config=greengrass.CfnDeployment.IoTJobAbortConfigProperty(criteria_list=[
                    greengrass.CfnDeployment.IoTJobAbortCriteriaProperty(
                        action="CANCEL", failure_type="ALL", min_number_of_executed_things=10,
                        threshold_percentage=20)])),
        )

