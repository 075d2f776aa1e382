"""``make bench``: run every ``bench/bench_*.py`` (each in its own process, so one benchmark's
imports, threads and garbage never colour another's figures), write the figures each returned to
``bench/results/latest.json`` with the machine they ran on, then print one summary table and draw
the plots (``bench/report.py``: ratios against the peer measured in the same run).

    python -m bench                 # all
    python -m bench scheduler agent # only these (their results replace theirs in latest.json)
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNNER = """
import json, sys, importlib
mod = importlib.import_module(sys.argv[1])
fn = mod.main
try:
    figures = fn([]) if fn.__code__.co_argcount and fn.__code__.co_varnames[0] == "argv" else fn()
except TypeError:
    figures = fn()
sys.stdout.flush()
print("\\n@@BENCH-RESULT@@" + json.dumps(figures, default=str))
"""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.uname().machine


def machine() -> dict:
    import psutil

    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "processor": _cpu_model(), "system": platform.platform(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            # A shared machine: how busy it was is part of what the figures mean.
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str]) -> int:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    wanted = [a if a.startswith("bench_") else f"bench_{a}" for a in argv]
    if wanted:
        unknown = set(wanted) - set(names)
        if unknown:
            print(f"unknown benchmarks: {', '.join(sorted(unknown))}; have: {', '.join(names)}", file=sys.stderr)
            return 2
        names = wanted
    RESULTS.mkdir(exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record: dict = {"started": started, "machine": machine(), "results": {}}
    previous = RESULTS / "latest.json"
    if wanted and previous.exists():  # a partial run updates its benchmarks, keeps the others
        try:
            record["results"] = json.loads(previous.read_text()).get("results", {})
        except ValueError:
            pass
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-c", RUNNER, f"bench.{name}"], cwd=HERE.parent, text=True,
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        out, _, result = proc.stdout.partition("\n@@BENCH-RESULT@@")
        print(out, end="")
        elapsed = time.time() - t0
        if proc.returncode != 0 or not result:
            failed.append(name)
            record["results"][name] = {"error": f"exit {proc.returncode}", "seconds": round(elapsed, 1),
                                       "started": started}
            continue
        record["results"][name] = {"figures": json.loads(result), "seconds": round(elapsed, 1), "started": started}
    (RESULTS / "latest.json").write_text(json.dumps(record, indent=2))
    from bench import report

    print(f"\n=== summary ({report.machine_line(record)}) ===\n")
    print(report.markdown_table(record))
    report.write(record)
    print(f"\nwrote {RESULTS / 'latest.json'}, {RESULTS / 'latest.md'} and the plots (*.png) in {RESULTS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
