"""DynamoDB tables of the topology: on-demand, encrypted, PITR, deletion protection per stage."""
from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from ig3.topology import Table
from ig3_cdk.settings import StageSettings


def _attr(name: str) -> dynamodb.Attribute:
    # Every key is a string: ids, DIDs and wallets are text in the wire models.
    return dynamodb.Attribute(name=name, type=dynamodb.AttributeType.STRING)


class Tables(Construct):
    def __init__(self, scope: Construct, id: str, *, tables: tuple[Table, ...], settings: StageSettings):
        super().__init__(scope, id)
        self.tables: dict[str, dynamodb.Table] = {}
        for t in tables:
            table = dynamodb.Table(
                self, t.name,
                partition_key=_attr(t.pk),
                sort_key=_attr(t.sk) if t.sk else None,
                billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                encryption=dynamodb.TableEncryption.AWS_MANAGED,
                point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                    point_in_time_recovery_enabled=settings.pitr),
                deletion_protection=settings.deletion_protection,
                time_to_live_attribute=t.ttl_attribute,
                removal_policy=RemovalPolicy.RETAIN if settings.retain_data else RemovalPolicy.DESTROY,
            )
            for index, pk, sk in t.gsis:
                table.add_global_secondary_index(index_name=index, partition_key=_attr(pk),
                                                 sort_key=_attr(sk) if sk else None,
                                                 projection_type=dynamodb.ProjectionType.ALL)
            self.tables[t.name] = table
