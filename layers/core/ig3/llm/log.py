"""The llm function's logger: Powertools' JSON Logger under the project's service name.

Not ``ig3.observability``: that module also builds the X-Ray Tracer, whose import pulls
botocore (~1 s of CPU) — the llm container's import budget is 600 ms. Same service name, same
JSON format, same rule: ids and sizes only, never prompts, tokens or keys.
"""
from __future__ import annotations

import os

from aws_lambda_powertools.logging import Logger

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "ig3-gateway"), child=False)
