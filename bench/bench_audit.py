"""Audit cost and accuracy on the real SmolLM2-135M-Instruct (Q4_1), with a tiny second model.

What it measures, on N honest tasks (distinct chat prompts; a third greedy, a third sampled at
T=0.7/top_p=0.9, a third sampled at T=1.0; each with a seed):
- the honest run (the device's own llama.cpp generation loop) — the *work*;
- the audit by re-scoring (one forward pass over prompt + output, ``ig3_edge.scoring``), and the
  audit by regeneration (running the work again) — CPU seconds of each, so other processes
  competing for the cores move the figures less than wall time would;
- the verdicts on honest work: false failures (the false-positive rate), undecided (went to
  regeneration), inconclusive;
- per cheating mode (random words, the tiny model claiming SmolLM2's hash, a replayed answer
  to another prompt), the fraction of its audits that fail;
- the honest devices' reputations: the audits are spread over ``--devices`` simulated devices
  and folded into ``ig3.audit.reputation``: how many honest devices got quarantined (goal 0).
Audit cost as a fraction of the work audited = audit CPU / work CPU; the network's overhead at
the default 5% audit rate is that fraction x 0.05 (plus suspects' audits).

``python bench/bench_audit.py --tasks 1000`` for the full false-positive run (about 2 CPU-s per
task on a busy 2-core box); the default is smaller so ``make bench`` stays short.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

TOPICS = [
    "rain",
    "the sea",
    "a cat",
    "bread",
    "trains",
    "the moon",
    "coffee",
    "a library",
    "winter",
    "bees",
    "mountains",
    "a violin",
    "chess",
    "gardens",
    "rivers",
    "clocks",
    "snow",
    "a bicycle",
    "tea",
    "stars",
]
ASKS = [
    "Write one sentence about {}.",
    "Give me a fun fact about {}.",
    "Describe {} in a few words.",
    "What is the first thing you think of when you hear about {}?",
    "Tell a very short story about {}.",
    "Why do people like {}?",
]
WORDS = (
    "the of and to in is was for on that with as by at from it this be are or an which".split()
    + "model river quickly blue seven under paper light music carefully".split()
)


def _prompts(n: int) -> list[str]:
    out = [a.format(t) for a in ASKS for t in TOPICS]
    i = 0
    while len(out) < n:
        out.append(f"{ASKS[i % len(ASKS)].format(TOPICS[i % len(TOPICS)])} (variant {i})")
        i += 1
    return out[:n]


def _limits(i: int, max_tokens: int):
    from ig3.wire import TaskLimits

    mode = i % 3
    if mode == 0:
        return TaskLimits(max_tokens=max_tokens, seed=i)
    if mode == 1:
        return TaskLimits(max_tokens=max_tokens, temperature=0.7, top_p=0.9, seed=i)
    return TaskLimits(max_tokens=max_tokens, temperature=1.0, seed=i)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=30)
    ap.add_argument("--cheats", type=int, default=9, help="tasks per cheating mode")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--devices", type=int, default=10)
    args = ap.parse_args(argv)

    import tempfile

    from ig3.audit import reputation as rep
    from ig3.audit.verdict import RescoreEvidence, Verdict, judge, judge_regeneration
    from ig3.local.fleet import smollm2_path
    from ig3.wire import ChatMessage
    from ig3_edge.scoring import Rescorer
    from ig3_edge.tinymodel import write_tiny_gguf

    auditor = Rescorer(smollm2_path())
    device = Rescorer(smollm2_path())  # the honest device: its own contexts, the agent's generation loop
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    tiny = Rescorer(write_tiny_gguf(tmp / "tiny.gguf", seed=7))
    rng = random.Random(13)
    prompts = _prompts(args.tasks + args.cheats)

    def gen(r: Rescorer, msgs, limits):
        c0 = time.process_time()
        text = r._backend.generate(
            r.model.name,
            messages=msgs,
            prompt=None,
            limits=limits,  # noqa: SLF001
            on_delta=lambda _d: None,
            should_stop=lambda: None,
        )
        return text, time.process_time() - c0

    def audit(msgs, text, finish, limits):
        c0 = time.process_time()
        ev = RescoreEvidence.from_mapping(
            auditor.score(
                messages=msgs, prompt=None, output=text, limits=limits, finish_reason=finish
            ).as_dict()
        )
        j = judge(ev)
        score_cpu = time.process_time() - c0
        regen_cpu = 0.0
        if j.verdict is Verdict.UNDECIDED:
            c1 = time.process_time()
            again = auditor.regenerate(messages=msgs, prompt=None, limits=limits)
            regen_cpu = time.process_time() - c1
            j = judge_regeneration(text, again, temperature=limits.temperature, seed=limits.seed)
        return j, ev, score_cpu, regen_cpu

    policy = rep.ReputationPolicy()
    states = [rep.ReputationState() for _ in range(args.devices)]
    quarantined: set[int] = set()
    honest = {"pass": 0, "fail": 0, "undecided": 0, "inconclusive": 0}
    work_cpu = score_cpu = regen_cpu_total = 0.0
    regen_cpu_all = 0.0  # what auditing *every* task by regeneration would cost
    out_tokens = 0
    t_start = time.perf_counter()
    now = 1_000_000.0
    for i in range(args.tasks):
        msgs = [ChatMessage(role="user", content=prompts[i])]
        limits = _limits(i, args.max_tokens)
        g, cpu = gen(device, msgs, limits)
        work_cpu += cpu
        out_tokens += g.completion_tokens
        j, ev, s_cpu, r_cpu = audit(msgs, g.text, g.finish_reason, limits)
        score_cpu += s_cpu
        regen_cpu_total += r_cpu
        if r_cpu:
            honest["undecided"] += 1
        # Regeneration as the audit method: the auditor runs the same generation (measured on
        # every 10th task, the rest estimated by the device's own cost, which it equals).
        if i % 10 == 0:
            _again, cpu_again = gen(auditor, msgs, limits)
            regen_cpu_all += cpu_again * 10
        if (
            j.verdict is Verdict.FAIL
        ):  # shown, never logged with prompt text elsewhere (a benchmark's own prompts)
            print(
                f"honest task {i} failed its audit: T={limits.temperature} top_p={limits.top_p}: {j.reason}"
            )
        key = "pass" if j.verdict is Verdict.PASS else "fail" if j.verdict is Verdict.FAIL else "inconclusive"
        honest[key] += 1
        if (i + 1) % 50 == 0:  # long runs: partial figures as they come
            print(
                f"progress: {i + 1} honest audits, false failures {honest['fail']}, "
                f"regenerated {honest['undecided']}, inconclusive {honest['inconclusive']}, "
                f"work cpu {work_cpu:.1f}s, rescore cpu {score_cpu:.1f}s",
                flush=True,
            )
        d = i % args.devices
        now += 60
        if j.verdict in (Verdict.PASS, Verdict.FAIL):
            sig = rep.Signal.AUDIT_PASS if j.verdict is Verdict.PASS else rep.Signal.AUDIT_FAIL
            states[d], tr = rep.apply(states[d], sig, now, policy)
            if tr == "quarantined":
                quarantined.add(d)
    honest_s = time.perf_counter() - t_start

    cheats: dict[str, dict[str, int]] = {}
    prompts_c = prompts[args.tasks :]
    for mode in ("random", "smaller_model", "replay"):
        counts = {"fail": 0, "pass": 0, "other": 0}
        previous = None
        for k in range(args.cheats):
            msgs = [ChatMessage(role="user", content=prompts_c[k])]
            limits = _limits(k, args.max_tokens)
            if mode == "random":
                text, finish = " ".join(rng.choice(WORDS) for _ in range(args.max_tokens // 2)), "length"
            elif mode == "smaller_model":
                g, _ = gen(tiny, msgs, limits)
                text, finish = g.text, g.finish_reason
            else:
                g, _ = gen(device, msgs, limits)
                text, finish = previous or (g.text, g.finish_reason)
                previous = (g.text, g.finish_reason)
                if k == 0:
                    continue  # nothing to replay yet
            j, _ev, _s, _r = audit(msgs, text, finish, limits)
            counts[
                "fail" if j.verdict is Verdict.FAIL else "pass" if j.verdict is Verdict.PASS else "other"
            ] += 1
        cheats[mode] = counts

    n = max(args.tasks, 1)
    figures = {
        "honest_tasks": args.tasks,
        "honest_false_failures": honest["fail"],
        "false_positive_rate": honest["fail"] / n,
        "honest_undecided_regenerated": honest["undecided"],
        "honest_inconclusive": honest["inconclusive"],
        "honest_devices_quarantined": len(quarantined),
        "work_cpu_s_per_task": work_cpu / n,
        "rescore_cpu_s_per_audit": score_cpu / n,
        "regenerate_cpu_s_per_audit": regen_cpu_all / n,
        "rescore_cost_fraction": score_cpu / work_cpu if work_cpu else None,
        "regenerate_cost_fraction": regen_cpu_all / work_cpu if work_cpu else None,
        "network_overhead_at_5pct_rescore": 0.05 * score_cpu / work_cpu if work_cpu else None,
        "network_overhead_at_5pct_regenerate": 0.05 * regen_cpu_all / work_cpu if work_cpu else None,
        "mean_output_tokens": out_tokens / n,
        "cheats": cheats,
        "honest_wall_s": honest_s,
    }
    print(
        f"audit bench: SmolLM2-135M-Instruct Q4_1, {args.tasks} honest tasks "
        f"(greedy / T=0.7 top_p=0.9 / T=1.0), max_tokens={args.max_tokens}"
    )
    print(f"{'figure':44s} {'value':>12s}")
    for k, v in figures.items():
        if k == "cheats":
            continue
        print(f"{k:44s} {v:12.4f}" if isinstance(v, float) else f"{k:44s} {v!s:>12s}")
    print(f"{'cheating mode':20s} {'audits':>7s} {'failed':>7s} {'passed':>7s} {'other':>7s}")
    for mode, c in cheats.items():
        total = sum(c.values())
        print(f"{mode:20s} {total:7d} {c['fail']:7d} {c['pass']:7d} {c['other']:7d}")
    for r in (auditor, device, tiny):
        r.close()
    return figures


if __name__ == "__main__":
    main()
