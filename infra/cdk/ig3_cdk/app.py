"""Builds the CDK app: two stacks per stage, cdk-nag (AWS Solutions) as a validation plugin.

Environment-agnostic unless ``CDK_DEFAULT_ACCOUNT``/``CDK_DEFAULT_REGION`` are set *and*
``-c ig3:env=pinned`` asks for it: the same template deploys to any account/region.
"""
from __future__ import annotations

import os

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks

from ig3.topology import TOPOLOGY, Topology
from ig3_cdk.settings import StageSettings, load
from ig3_cdk.stateful import StatefulStack
from ig3_cdk.stateless import StatelessStack


def stack_names(stage: str) -> tuple[str, str]:
    return f"ig3-{stage}-stateful", f"ig3-{stage}-stateless"


def build(app: App, topology: Topology = TOPOLOGY) -> tuple[StageSettings, StatefulStack, StatelessStack]:
    topology.validate()
    settings = load(app.node)
    env = None
    if app.node.try_get_context("ig3:env") == "pinned":
        env = Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=os.environ.get("CDK_DEFAULT_REGION"))
    stateful_name, stateless_name = stack_names(settings.stage)
    stateful = StatefulStack(app, stateful_name, topology=topology, settings=settings, env=env)
    stateless = StatelessStack(app, stateless_name, topology=topology, settings=settings, stateful=stateful,
                               env=env)
    stateless.add_stack_dependency(stateful)
    if app.node.try_get_context("ig3:nag") not in ("off", False, "false"):
        Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return settings, stateful, stateless
