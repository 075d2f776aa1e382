"""The EventBridge bus, its archive (replay after a consumer bug) and the topology's rules -> SQS."""
from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ig3.events import SOURCE
from ig3.topology import EventRule
from ig3_cdk.settings import StageSettings


class EventBus(Construct):
    def __init__(self, scope: Construct, id: str, *, rules: tuple[EventRule, ...], queues: dict[str, sqs.Queue],
                 dlqs: dict[str, sqs.Queue], settings: StageSettings):
        super().__init__(scope, id)
        self.bus = events.EventBus(self, "Bus", description="ig3 domain events (every state change)")
        self.archive = events.Archive(
            self, "Archive", source_event_bus=self.bus, retention=Duration.days(settings.event_archive_days),
            description="replay domain events into the rules' queues after a consumer fix",
            event_pattern=events.EventPattern(source=[SOURCE]))
        self.rules: dict[str, events.Rule] = {}
        for rule in rules:
            target = targets.SqsQueue(
                queues[rule.target_queue],
                # Delivery failures (queue unavailable) land in the target's own DLQ, not silently dropped.
                dead_letter_queue=dlqs.get(rule.target_queue),
                retry_attempts=185,  # EventBridge's maximum: retries for 24 h
                max_event_age=Duration.hours(24))
            self.rules[rule.name] = events.Rule(
                self, rule.name, event_bus=self.bus, description=f"{rule.source}: {', '.join(rule.detail_types)}",
                event_pattern=events.EventPattern(source=[rule.source], detail_type=list(rule.detail_types)),
                targets=[target])
