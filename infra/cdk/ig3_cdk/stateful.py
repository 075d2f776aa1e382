"""The stateful stack: everything that holds data or network identity and must outlive code deploys.

Tables, queues and DLQs, S3 buckets, the event bus (with its archive and rules), secrets, the VPC and the
cache. Split from the stateless stack so a bad code deploy can be rolled back or the stateless
stack destroyed and recreated without touching data; prod retains and deletion-protects it.
"""
from __future__ import annotations

from aws_cdk import Stack, Tags
from constructs import Construct

from ig3.topology import Topology
from ig3_cdk.constructs.buckets import Buckets
from ig3_cdk.constructs.cache import Cache
from ig3_cdk.constructs.events import EventBus
from ig3_cdk.constructs.network import Network
from ig3_cdk.constructs.queues import Queues
from ig3_cdk.constructs.secrets import Secrets
from ig3_cdk.constructs.tables import Tables
from ig3_cdk.settings import StageSettings


class StatefulStack(Stack):
    def __init__(self, scope: Construct, id: str, *, topology: Topology, settings: StageSettings, **kwargs):
        super().__init__(scope, id, description=f"ig3-gateway {settings.stage}: data, queues, bus, cache, network",
                         termination_protection=settings.is_prod, **kwargs)
        Tags.of(self).add("ig3:stage", settings.stage)
        self.topology = topology
        self.network = Network(self, "Network", settings=settings,
                               egress=any(f.uses_redis and f.internet for f in topology.functions))
        self.data = Tables(self, "Tables", tables=topology.tables, settings=settings)
        self.messaging = Queues(self, "Queues", queues=topology.queues)
        self.events = EventBus(self, "Events", rules=topology.event_rules, queues=self.messaging.queues,
                               dlqs=self.messaging.dlqs, settings=settings)
        self.secrets = Secrets(self, "Secrets", secrets=topology.secrets, settings=settings)
        self.storage = Buckets(self, "Buckets", buckets=topology.buckets, settings=settings)
        self.cache = Cache(self, "Cache", network=self.network, settings=settings)
