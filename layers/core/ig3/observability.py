"""One observability module: Powertools Logger (JSON), Metrics (EMF) and Tracer.

Every function and the local cloud take their logger/metrics/tracer from here, so the
service name, namespace and log redaction policy are set once. The logger itself lives in
``ig3.log`` (no botocore), the one instance the llm container shares. Logs never carry secrets,
tokens or prompt text: callers log ids and sizes, never bodies.
"""
from __future__ import annotations

import os
import warnings

from aws_lambda_powertools import Metrics, Tracer

from ig3.log import SERVICE, logger  # noqa: F401 — re-exported: "take their logger from here"

NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "ig3")

# Tracing is off unless X-Ray is there (the local cloud has none).
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true" if not os.environ.get("AWS_XRAY_DAEMON_ADDRESS") else "false")

metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)

# A function that recorded no metric in an invocation is normal here (e.g. an empty poll).
warnings.filterwarnings("ignore", message="No application metrics to publish")
