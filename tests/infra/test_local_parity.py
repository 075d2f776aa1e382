"""The local cloud and the CDK app give every function the same resource variables.

``ig3.local.resources.provision`` (moto server) and the synthesized template are both built
from TOPOLOGY; here each function's table/queue/bucket/bus/secret variables in the template must be among the
names the local cloud sets, so a handler that runs locally finds its resources in AWS too.
"""
from __future__ import annotations

from ig3.topology import BUS_ENV, TOPOLOGY

from .conftest import by_path


def test_function_resource_variables_exist_in_the_local_cloud(prod, aws_env):
    fns = by_path(prod.stateless, "AWS::Lambda::Function", "/Functions/")
    for f in TOPOLOGY.functions:
        env = fns[f.name]["Properties"]["Environment"]["Variables"]
        secret_envs = {s.env for s in TOPOLOGY.secrets}
        bucket_envs = {b.variable for b in TOPOLOGY.buckets}
        names = {k for k in env if k.startswith(("IG3_TABLE_", "IG3_QUEUE_", "IG3_BUCKET_"))
                 or k == BUS_ENV or k in secret_envs or k in bucket_envs}
        assert secret_envs & set(env) == {s.env for s in TOPOLOGY.secrets if s.name in f.secrets}, f.name
        missing = names - set(aws_env)
        assert not missing, (f.name, missing)
