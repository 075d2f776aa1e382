"""The llm modules and the functions share ONE Powertools Logger, whichever is imported first.

Two Loggers of one service in a process share the standard logger and the second skips its
set-up, so its ``append_keys`` (what ``inject_lambda_context`` calls) failed when the llm modules
came first. A fresh interpreter per order: this test process has imported both long ago."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from ig3.llm.gateway import logger as llm_logger
from ig3.observability import logger
logger.append_keys(request_id="req_1")
logger.info("hello")
print(json.dumps({"same": llm_logger is logger}))
"""


@pytest.mark.parametrize("first", [["ig3.llm.gateway", "ig3.observability"], ["ig3.observability", "ig3.llm.gateway"]])
def test_one_logger_whichever_module_comes_first(first):
    out = subprocess.run([sys.executable, "-c", SCRIPT, *first], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"same": True}
    record = json.loads(out.stderr.strip().splitlines()[-1])  # the JSON log line, on stderr
    assert record["message"] == "hello" and record["request_id"] == "req_1"
