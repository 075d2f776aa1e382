"""One observability module: Powertools Logger (JSON), Metrics (EMF) and Tracer.

Every function and the local cloud take their logger/metrics/tracer from here, so the
service name, namespace and log redaction policy are set once. Logs never carry secrets,
tokens or prompt text: callers log ids and sizes, never bodies.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "ig3-gateway")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "ig3")

# Tracing is off unless X-Ray is there (the local cloud has none).
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true" if not os.environ.get("AWS_XRAY_DAEMON_ADDRESS") else "false")

# stderr: Lambda ships it to CloudWatch like stdout, and locally stdout stays for program output
# (``ig3 up`` prints its ``ready`` line there).
logger = Logger(service=SERVICE, logger_handler=logging.StreamHandler(sys.stderr))
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)

# A function that recorded no metric in an invocation is normal here (e.g. an empty poll).
warnings.filterwarnings("ignore", message="No application metrics to publish")
