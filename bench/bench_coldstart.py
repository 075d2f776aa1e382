"""Cold-start import time of every function's handler module — what a Lambda cold start pays
before the first event, on top of the runtime's own start.

Per function of the topology: ``import <handler module>`` in a fresh interpreter (as a new
Lambda execution environment does), CPU and wall milliseconds, the best of ``--repeat`` runs,
and the number of modules it loaded. CPU time is the headline: on a shared, busy machine the
wall time is mostly waiting for a core (one run saw 13-22 s wall for 1-2 s of CPU). The interpreter's own start-up is measured once and not included. The
environment is Lambda's: no AWS calls happen at import (clients are built on first use), so no
endpoint is needed. Package sizes are ``make synth``'s report (it bundles every artifact).

Run: ``.venv/bin/python bench/bench_coldstart.py [--repeat 1]``
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys, time
t, c = time.perf_counter(), time.process_time()
before = len(sys.modules)
import importlib
module = importlib.import_module(sys.argv[1])
getattr(module, sys.argv[2])
print(json.dumps({"wall_ms": (time.perf_counter() - t) * 1000, "cpu_ms": (time.process_time() - c) * 1000,
                  "modules": len(sys.modules) - before}))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "POWERTOOLS_TRACE_DISABLED": "true",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def measure(module: str, attr: str, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        proc = subprocess.run([sys.executable, "-c", PROBE, module, attr], cwd=ROOT, env=_env(), text=True,
                              capture_output=True, timeout=300)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else "failed"}
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["cpu_ms"])
    return {"wall_ms": round(best["wall_ms"], 1), "cpu_ms": round(best["cpu_ms"], 1), "modules": best["modules"]}


def main(argv: list[str] | None = None) -> dict:
    from ig3.topology import TOPOLOGY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args([] if argv is None else argv)
    figures: dict = {}
    for fn in TOPOLOGY.functions:
        module, _, attr = fn.handler.partition(":")
        figures[fn.name] = {"handler": fn.handler, "package": fn.package, **measure(module, attr, args.repeat)}
    print(f"{'function':<20} {'package':<7} {'import CPU ms':>14} {'wall ms':>9} {'modules':>8}")
    for name, f in figures.items():
        if "error" in f:
            print(f"{name:<20} {f['package']:<7} FAILED {f['error']}")
        else:
            print(f"{name:<20} {f['package']:<7} {f['cpu_ms']:>14.1f} {f['wall_ms']:>9.1f} {f['modules']:>8}")
    print(f"(best of {args.repeat} fresh interpreters each; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs)")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
