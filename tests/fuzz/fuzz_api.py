"""``make fuzz``: ``ig3 up`` (tiny models, one device), then every operation of its
``/openapi.json`` fuzzed (``tests/fuzz/openapi_fuzz.py``); exit 1 on any 5xx or malformed 4xx.

    python -m tests.fuzz.fuzz_api [--examples 25] [--url URL --api-key KEY]   # FUZZ_EXAMPLES
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from tests.fuzz.openapi_fuzz import fuzz

# Every API configured, so "not configured" (503) is never the answer: the Telegram bot gets a
# token and webhook secret (the Bot API itself at a closed port: the fuzzer never links a chat).
FUZZ_ENV = {"IG3_TELEGRAM_BOT_TOKEN": "123456:fuzz", "IG3_TELEGRAM_WEBHOOK_SECRET": "fuzz-webhook-secret",
            "IG3_TELEGRAM_API_URL": "http://127.0.0.1:9"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=int(os.environ.get("FUZZ_EXAMPLES", 25)),
                    help="positive cases per operation (as many negative ones again)")
    ap.add_argument("--url", help="an ig3 up already running (else one is started)")
    ap.add_argument("--api-key")
    args = ap.parse_args(argv)
    cloud = None
    if args.url:
        url, key = args.url, args.api_key or os.environ["IG3_API_KEY"]
    else:
        from tests.e2e.conftest import start_cloud

        print("starting ig3 up (--tiny-models, 1 device)...", flush=True)
        cloud = start_cloud(Path(tempfile.mkdtemp(prefix="ig3-fuzz-")), devices=1, extra_env=FUZZ_ENV)
        url, key = cloud.url, cloud.api_key
    try:
        report = fuzz(url, key, examples=args.examples, log=lambda line: print(line, flush=True))
    finally:
        if cloud is not None:
            from tests.e2e.conftest import stop_cloud

            stop_cloud(cloud)
    print(f"\n{report.operations} operations, {report.requests} requests in {report.seconds} s; statuses "
          f"{dict(sorted(report.statuses.items()))}; 5xx: {report.server_errors}")
    for (op, problem), case in sorted(report.failures.items()):
        print(f"FAIL {op} [{problem}]\n    {case}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
