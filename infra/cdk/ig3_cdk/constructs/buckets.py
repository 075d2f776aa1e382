"""S3 buckets of the topology (``rag``: Faiss indexes and uploads awaiting ingestion; ``models``: the
audit function's reference GGUF files by sha256).

Private (all public access blocked, ACLs disabled), S3-managed encryption, TLS enforced. ``rag`` is not
versioned: the Faiss store rewrites its index object on every write (with ``If-Match`` on the
ETag for optimistic concurrency), so versions would only multiply the storage; the declared
``expire_prefixes`` become lifecycle rules (uploads a failed job left behind expire). ``models`` is
versioned (``Bucket.versioned``: its objects are written once, by an operator, and an overwrite or
delete must be recoverable; noncurrent versions expire after 90 days). Retained
in prod; other stages destroy it with the stack (no auto-delete custom resource: the stateful
stack runs no Lambda).
"""
from __future__ import annotations

from aws_cdk import Acknowledgment, Aws, Duration, RemovalPolicy, Validations
from aws_cdk import aws_s3 as s3
from constructs import Construct

from ig3.topology import Bucket
from ig3_cdk.settings import StageSettings


def bucket_name(stage: str, name: str) -> str:
    """Globally unique and known to both stacks without a cross-stack export: functions address
    it by name (and their IAM statements stay readable: ``ig3-prod-rag-<account>-<region>/*``)."""
    return f"ig3-{stage}-{name}-{Aws.ACCOUNT_ID}-{Aws.REGION}"


def bucket_objects_arn(stage: str, name: str) -> str:
    return f"arn:{Aws.PARTITION}:s3:::{bucket_name(stage, name)}/*"


class Buckets(Construct):
    def __init__(self, scope: Construct, id: str, *, buckets: tuple[Bucket, ...], settings: StageSettings):
        super().__init__(scope, id)
        self.buckets: dict[str, s3.Bucket] = {}
        for b in buckets:
            bucket = s3.Bucket(
                self, b.name,
                bucket_name=bucket_name(settings.stage, b.name),
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                encryption=s3.BucketEncryption.S3_MANAGED,
                enforce_ssl=True,
                object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
                versioned=b.versioned,
                lifecycle_rules=[
                    s3.LifecycleRule(id=f"expire-{i}", prefix=prefix, expiration=Duration.days(days),
                                     abort_incomplete_multipart_upload_after=Duration.days(1))
                    for i, (prefix, days) in enumerate(b.expire_prefixes)] + ([
                    # Versioned (the models bucket): replaced or deleted objects stay recoverable for 90 days.
                    s3.LifecycleRule(id="noncurrent", noncurrent_version_expiration=Duration.days(90),
                                     abort_incomplete_multipart_upload_after=Duration.days(1))]
                    if b.versioned else []),
                removal_policy=RemovalPolicy.RETAIN if settings.retain_data else RemovalPolicy.DESTROY)
            Validations.of(bucket).acknowledge(Acknowledgment(
                id="AwsSolutions-S1",
                reason="only the functions that declare this bucket reach it, through their own roles; "
                       "CloudTrail data events are the audit trail, not server access logs"))
            self.buckets[b.name] = bucket
