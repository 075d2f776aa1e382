"""cdk-nag (AWS Solutions, cdk-nag 3 as a CDK validation plugin) and cfn-lint, both stages."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# CDK itself emits an explicit DependsOn on each function's role next to the GetAtt (W3005 says the
# dependency is already implied) — redundant, harmless, not ours to change.
CFN_LINT_IGNORED = ("W3005",)


@pytest.mark.parametrize("stage", ["prod", "dev"])
def test_cdk_nag_has_no_unacknowledged_errors(stage, request):
    s = request.getfixturevalue(stage)
    assert s.error is None, f"synth failed: {s.error}\n{s.nag_errors()}"
    assert s.nag_errors() == []


def test_every_nag_acknowledgment_carries_a_reason(prod):
    """Acknowledgments live in code next to what they excuse; each has a real reason (CDK records
    them as ``aws:cdk:acknowledged-rules`` metadata on the construct)."""
    acks = {}
    for stack in prod.stacks:
        for construct in stack.node.find_all():
            for entry in construct.node.metadata:
                if entry.type == "aws:cdk:acknowledged-rules":
                    for rule, reason in entry.data.items():
                        # CDK adds its own (e.g. CloudFormation-Validate::W3010); ours are cdk-nag's.
                        if "AwsSolutions-" in rule:
                            acks[(construct.node.path, rule)] = reason
    assert acks, "no acknowledgments found"
    for (path, rule), reason in acks.items():
        assert len(reason) > 40, (path, rule, reason)


def test_cfn_lint_clean(prod, dev):
    templates = [str(s.outdir / f"{name}.template.json") for s in (prod, dev)
                 for name in (f"ig3-{s.stage}-stateful", f"ig3-{s.stage}-stateless")]
    done = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable",
                           "--ignore-checks", *CFN_LINT_IGNORED, "--", *templates],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_synth_time_is_reported(prod, dev):
    # Not a benchmark: a guard that source-mode synths stay fast enough for `make test`.
    print(f"\nsynth seconds: prod {prod.seconds:.1f}, dev {dev.seconds:.1f}")
    assert prod.seconds < 240 and dev.seconds < 240
