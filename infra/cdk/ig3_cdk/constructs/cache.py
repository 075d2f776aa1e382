"""ElastiCache Serverless (Valkey): the scheduler's live device state, caches, rate limits.

Serverless because load follows traffic (no node sizing); usage limits cap the bill. TLS is
always on for serverless caches, hence ``rediss://``. Access is by network: only the
``CacheClientsSg`` security group reaches ports 6379/6380.
"""
from __future__ import annotations

from aws_cdk import Fn
from aws_cdk import aws_elasticache as elasticache
from constructs import Construct

from ig3_cdk.constructs.network import Network
from ig3_cdk.settings import StageSettings


class Cache(Construct):
    def __init__(self, scope: Construct, id: str, *, network: Network, settings: StageSettings):
        super().__init__(scope, id)
        subnets = network.vpc.select_subnets(subnet_type=network.subnets.subnet_type).subnet_ids
        self.cache = elasticache.CfnServerlessCache(
            self, "Cache",
            serverless_cache_name=f"ig3-{settings.stage}",
            engine="valkey",
            major_engine_version="8",
            description=f"ig3 {settings.stage} live state",
            subnet_ids=subnets,
            security_group_ids=[network.cache_sg.security_group_id],
            snapshot_retention_limit=settings.cache_snapshot_days,
            cache_usage_limits=elasticache.CfnServerlessCache.CacheUsageLimitsProperty(
                data_storage=elasticache.CfnServerlessCache.DataStorageProperty(
                    maximum=settings.cache_max_data_gb, unit="GB"),
                ecpu_per_second=elasticache.CfnServerlessCache.ECPUPerSecondProperty(
                    maximum=settings.cache_max_ecpu_per_s)),
        )
        self.url = Fn.join("", ["rediss://", self.cache.attr_endpoint_address, ":",
                                self.cache.attr_endpoint_port, "/0"])
