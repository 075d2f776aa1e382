"""The project's one logger: Powertools' JSON Logger under the service name, on stderr.

Its own module, apart from ``ig3.observability`` (which adds Metrics and the X-Ray Tracer, whose
import pulls botocore: ~1 s of CPU, over the llm container's 600 ms import budget), so every
entry point shares ONE instance. Two Powertools Loggers of one service in a process share the
standard logger, and the second one skips its set-up: its ``append_keys`` (what
``inject_lambda_context`` calls) then fails on a formatter it never built. That broke the
functions' logger whenever the llm modules were imported first (e.g. tests/llm before
tests/dispatch in one run).

stderr: Lambda ships it to CloudWatch like stdout, and locally stdout stays for program output
(``ig3 up`` prints its ``ready`` line there). Logs carry ids and sizes, never prompts, tokens,
keys or bodies.
"""
from __future__ import annotations

import logging
import os
import sys

from aws_lambda_powertools.logging import Logger

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "ig3-gateway")

logger = Logger(service=SERVICE, logger_handler=logging.StreamHandler(sys.stderr))
