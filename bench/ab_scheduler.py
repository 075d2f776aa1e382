"""Same-process A/B of the scheduler against an earlier commit: the honest ratio on a noisy VM.

Two back-to-back runs of ``bench_scheduler`` on this shared VM differ by up to ±30 %, more than
most changes to the decision path. Here the baseline's ``ig3`` (``git archive <rev>``, renamed to
``ig3_baseline``) and the working tree's run in ONE process against ONE fleet on a private,
pinned redis-server, alternating windows of ``--window`` decisions (the order flips every round),
so both see the same moments of the machine. Both must share the live-state key layout (the
heartbeat script of the working tree populates the fleet); the script cache holds both versions.

Per side: single decisions (``Scheduler.place``) p50/p99 latency, the client's CPU and Redis's CPU
per decision (window medians); batches of 10 (``place_many``, one thread) decisions/s, CPU and
Redis CPU per decision. Ratios are working tree / baseline.

Run: ``.venv/bin/python bench/ab_scheduler.py --baseline HEAD~3 [--devices 100000] [--rounds 12]``
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import io
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scheduler as bs  # noqa: E402


def baseline_package(rev: str, into: Path) -> None:
    """``layers/core/ig3`` at ``rev`` as the package ``ig3_baseline`` under ``into``."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "layers/core/ig3"], check=True,
                         capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    pkg = into / "ig3_baseline"
    (into / "layers/core/ig3").rename(pkg)
    rename = re.compile(r"\b(from|import) ig3(\.|\b)")
    for f in pkg.rglob("*.py"):
        text = f.read_text()
        text = rename.sub(lambda m: f"{m.group(1)} ig3_baseline{m.group(2)}", text)
        f.write_text(text.replace('"ig3.', '"ig3_baseline.'))


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def run(devices: int, rounds: int, window: int) -> dict[str, dict[str, float]]:
    import ig3.scheduler as new
    import ig3_baseline.scheduler as old

    proc, r = bs._private_server(pin=True)
    try:
        now = time.time()
        lives = {"baseline": old.LiveState(r, prefix="{ab}:", ttl_s=3600),
                 "working": new.LiveState(r, prefix="{ab}:", ttl_s=3600)}
        lives["working"].apply_heartbeats(bs._fleet(devices, now), now=now)
        mods = {"baseline": old, "working": new}
        scheds = {k: mods[k].Scheduler(lives[k], mods[k].Weights(), random.Random(3)) for k in mods}
        base_reqs = bs._requests(window * rounds + 200)
        reqs = {k: [mods[k].PlacementRequest(**{f.name: getattr(q, f.name) for f in dataclasses.fields(q)})
                    for q in base_reqs] for k in mods}
        acc = {k: {"lat": [], "cpu": [], "rcpu": [], "b_wall": [], "b_cpu": [], "b_rcpu": []} for k in mods}
        for k, s in scheds.items():  # warm-up: script cache, connections, offer caches
            for q in reqs[k][:200]:
                p = s.place(q)
                if p:
                    s.release(p.thing, q.task_id)
        gc.collect()
        gc.freeze()
        at = 200
        for rnd in range(rounds):
            for k in (("baseline", "working") if rnd % 2 == 0 else ("working", "baseline")):
                s, part, a = scheds[k], reqs[k][at : at + window], acc[k]
                held = []
                c0, s0 = time.process_time(), bs._server_cpu(r)
                for q in part:
                    t = time.perf_counter()
                    p = s.place(q)
                    a["lat"].append(time.perf_counter() - t)
                    if p:
                        held.append((p.thing, q.task_id))
                a["cpu"].append((time.process_time() - c0) / window)
                a["rcpu"].append((bs._server_cpu(r) - s0) / window)
                for thing, task in held:
                    s.release(thing, task)
                held = []
                batch = [dataclasses.replace(q, task_id=q.task_id + "-b") for q in part]
                c0, s0, t0 = time.process_time(), bs._server_cpu(r), time.perf_counter()
                for b in range(0, window, 10):
                    outs = s.place_many(batch[b : b + 10])
                    held += [(o.placement.thing, q.task_id) for q, o in zip(batch[b : b + 10], outs) if o.placement]
                a["b_wall"].append((time.perf_counter() - t0) / window)
                a["b_cpu"].append((time.process_time() - c0) / window)
                a["b_rcpu"].append((bs._server_cpu(r) - s0) / window)
                for thing, task in held:
                    s.release(thing, task)
            at += window
        gc.unfreeze()
        med = statistics.median
        return {k: {"p50_ms": _pct(a["lat"], 0.50) * 1e3, "p99_ms": _pct(a["lat"], 0.99) * 1e3,
                    "client_cpu_us": med(a["cpu"]) * 1e6, "redis_cpu_us": med(a["rcpu"]) * 1e6,
                    "batched_per_s": 1 / med(a["b_wall"]), "batched_cpu_us": med(a["b_cpu"]) * 1e6,
                    "batched_redis_cpu_us": med(a["b_rcpu"]) * 1e6} for k, a in acc.items()}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare the working tree with")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--window", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        baseline_package(args.baseline, Path(tmp))
        sys.path.insert(0, tmp)
        out = run(args.devices, args.rounds, args.window)
    cols = list(out["working"])
    print(f"{args.devices} devices, {args.rounds} rounds of {args.window} decisions per side, baseline {args.baseline}")
    print("side | " + " | ".join(cols))
    for side in ("baseline", "working"):
        print(side + " | " + " | ".join(f"{out[side][c]:.3f}" if c.endswith("_ms") else f"{out[side][c]:.0f}"
                                        for c in cols))
    print("ratio | " + " | ".join(f"{out['working'][c] / out['baseline'][c]:.2f}" for c in cols))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
