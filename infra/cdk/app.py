#!/usr/bin/env python3
"""CDK entry point: ``cd infra/cdk && npx aws-cdk synth -c ig3:stage=prod`` or ``make synth``.

Prints the unzipped size of every Lambda artifact (function + its layers; the limit is 250 MB)
and the llm image's estimated size after synth.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk import App  # noqa: E402

from ig3_cdk.app import build  # noqa: E402
from ig3_cdk.report import print_report, sizes  # noqa: E402


def main() -> None:
    started = time.perf_counter()
    # Under the CDK CLI the context arrives in CDK_CONTEXT_JSON; run directly, read cdk.json's.
    context = None
    if "CDK_CONTEXT_JSON" not in os.environ:
        context = {**json.loads((HERE / "cdk.json").read_text())["context"], "aws:cdk:enable-path-metadata": True}
        for arg in sys.argv[1:]:  # `python app.py ig3:stage=prod` mirrors `cdk synth -c ig3:stage=prod`
            key, _, value = arg.partition("=")
            context[key] = value
    app = App(outdir=os.environ.get("CDK_OUTDIR") or str(HERE / "cdk.out"), context=context)
    settings, _, stateless = build(app)
    assembly = app.synth()
    elapsed = time.perf_counter() - started
    print_report(sizes(assembly.directory, stateless), settings=settings, synth_s=elapsed, stream=sys.stderr)


if __name__ == "__main__":
    main()
