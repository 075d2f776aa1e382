"""Secrets Manager secrets of the topology (e.g. the JWT signing keys).

The value starts as an empty key set; the identity service owns the keys and their ``kid``
rotation (new key added, old one kept until its tokens expire), which a generic rotation Lambda
cannot do without knowing the token lifetimes.
"""
from __future__ import annotations

from aws_cdk import Acknowledgment, RemovalPolicy, Validations
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from ig3.topology import Secret
from ig3_cdk.settings import StageSettings


class Secrets(Construct):
    def __init__(self, scope: Construct, id: str, *, secrets: tuple[Secret, ...], settings: StageSettings):
        super().__init__(scope, id)
        self.secrets: dict[str, secretsmanager.Secret] = {}
        for s in secrets:
            secret = secretsmanager.Secret(
                self, s.name, description=s.description or s.name,
                generate_secret_string=secretsmanager.SecretStringGenerator(
                    secret_string_template='{"keys": []}', generate_string_key="bootstrap",
                    exclude_punctuation=True),
                removal_policy=RemovalPolicy.RETAIN if settings.retain_data else RemovalPolicy.DESTROY)
            Validations.of(secret).acknowledge(Acknowledgment(
                id="AwsSolutions-SMG4",
                reason="keys are rotated by the owning service (JWT kid rotation keeps the previous key until "
                       "its tokens expire); a generic Secrets Manager rotation Lambda cannot know that"))
            self.secrets[s.name] = secret
