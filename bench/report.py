"""The summary of a ``make bench`` record: one table, the plots, the README section.

    python -m bench.report            # from bench/results/latest.json: table + plots again
    python -m bench.report --readme   # also replace the README's benchmark section with them

One row per headline figure. Where a benchmark runs a peer in the same run (the LLM gateway vs
LiteLLM's proxy and vs the upstream called directly; the edge agent vs llama.cpp called
directly), the row has the peer's figure and the ratio ours / peer: the machine is shared, so the
ratio from one run is what to compare, not the absolute times. Plots (PNG, ``bench/plot.py``):
latency percentiles vs concurrency (gateway) and decision latency vs fleet size (scheduler).
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
Row = tuple[str, str, Any, Any]  # (figure, unit, ours, peer or None)


def _num(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    if v == int(v) and abs(v) >= 100:
        return f"{int(v):,}"
    return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def _points(fig: dict) -> dict[int, dict]:
    return {int(c): v for c, v in fig["points"].items()}


def _gateway(fig: dict) -> list[Row]:
    rows: list[Row] = []
    pts = _points(fig)
    for c in sorted(pts):
        p = pts[c]
        peer = p.get("litellm")
        rows.append((f"added p50 over direct, c={c}", "ms", p["ig3"]["added_p50_ms"], peer and peer["added_p50_ms"]))
        rows.append((f"added p99 over direct, c={c}", "ms", p["ig3"]["added_p99_ms"], peer and peer["added_p99_ms"]))
    top = max(pts)
    peer = pts[top].get("litellm")
    rows.append((f"throughput, c={top}", "req/s", pts[top]["ig3"]["rps"], peer and peer["rps"]))
    rows.append((f"CPU per request, c={top}", "ms", pts[top]["ig3"].get("cpu_ms_per_req"),
                 peer and peer.get("cpu_ms_per_req")))
    rows.append(("import of the llm function", "ms", fig["import"]["wall_ms"], None))
    return rows


def _scheduler(fig: dict) -> list[Row]:
    rows: list[Row] = []
    for r in fig["scheduler"]:
        rows.append((f"decision p50 / p99, {r['devices']:,} devices", "ms", f"{r['p50_ms']} / {r['p99_ms']}", None))
    big = fig["scheduler"][-1]
    if big.get("near_p99_ms") is not None:  # recorded since the view of the index head
        rows.append((f"decision p50 / p99 with / without a client location, {big['devices']:,} devices", "ms",
                     f"{big['near_p50_ms']} / {big['near_p99_ms']} · {big['far_p50_ms']} / {big['far_p99_ms']}",
                     None))
    rows.append((f"decisions/s (one thread), {big['devices']:,} devices", "1/s", big["decisions_per_s"], None))
    if big.get("batched_decisions_per_s"):
        tag = f"batches of {big['batch']}, {big['threads']} threads"
        rows.append((f"decisions/s placed in {tag}, {big['devices']:,} devices", "1/s",
                     big["batched_decisions_per_s"], None))
        rows.append((f"batch latency p50 / p99 ({tag}), {big['devices']:,} devices", "ms",
                     f"{big['batched_p50_ms']} / {big['batched_p99_ms']}", None))
        rows.append((f"dispatcher CPU per decision in batches, {big['devices']:,} devices", "µs",
                     big["batched_cpu_us"], None))
    return rows


def _agent(fig: dict) -> list[Row]:
    a = fig["agent"]
    return [("time to first token (peer: llama.cpp direct)", "ms", a["agent_ttft_ms"], a["direct_ttft_ms"]),
            ("decode speed (peer: llama.cpp direct)", "tok/s", a["agent_tokens_per_s"], a["direct_tokens_per_s"]),
            ("CPU per task (peer: llama.cpp direct)", "ms", a["agent_cpu_ms_per_task"], a["direct_cpu_ms_per_task"]),
            ("agent time outside the engine before 1st token", "ms", a["agent_outside_engine_ttft_ms"], None)]


def _cases(unit: str, key: str) -> Callable[[dict], list[Row]]:
    def rows(fig: dict) -> list[Row]:
        return [(f"{name} p50", unit, v[key], None) for name, v in fig.items() if isinstance(v, dict) and key in v]
    return rows


def _dispatch(fig: dict) -> list[Row]:
    # One set of figures, or one per way of publishing the events ({"immediate": ..., "batched": ...}).
    modes = {k: v for k, v in fig.items() if isinstance(v, dict) and "dispatch_per_s_handler" in v} or {"": fig}
    rows: list[Row] = []
    for mode, f in modes.items():
        tag = f", events {mode}" if mode else ""
        rows += [(f"dispatch throughput (handler){tag}", "tasks/s", f["dispatch_per_s_handler"], None),
                 (f"per dispatch p50 / p99{tag}", "ms", f"{f['dispatch_p50_ms']} / {f['dispatch_p99_ms']}", None),
                 (f"share of handler time in placement{tag}", "%", round(f["place_share"] * 100, 1), None)]
    return rows


def _billing(fig: dict) -> list[Row]:
    return [("price (cost), per call", "µs", fig["price_cost_us"], None),
            ("hold+settle, memory store", "µs", fig["hold_settle_memory_us"], None),
            ("hold+settle on moto, serialized", "pairs/s", fig.get("moto_serialized_pairs_per_s"), None)]


def _pubsub(fig: dict) -> list[Row]:
    return [(f"network summary, {fig['devices']:,} devices, p50", "ms", fig["summary_ms_p50"], None),
            ("heartbeat applied", "µs", fig["heartbeat_apply_us"], None),
            ("messages per viewer per second", "1/s", fig["messages_per_viewer_per_s"], None)]


def _rag(fig: dict) -> list[Row]:
    rows: list[Row] = []
    for s in fig.get("stores", []):
        rows.append((f"{s['store']}: query p50, {s['vectors']:,} vectors", "ms", s["query_p50_ms"], None))
        rows.append((f"{s['store']}: ingest", "vectors/s", s["ingest_vectors_per_s"], None))
    return rows


def _coldstart(fig: dict) -> list[Row]:
    ok = {n: f for n, f in fig.items() if isinstance(f, dict) and "cpu_ms" in f}
    cpus = sorted(f["cpu_ms"] for f in ok.values())
    rows: list[Row] = [(f"handler import CPU, median of {len(ok)} functions", "ms", cpus[len(cpus) // 2], None)]
    for name, f in sorted(ok.items(), key=lambda kv: -kv[1]["cpu_ms"])[:3]:
        rows.append((f"handler import CPU, {name} ({f['package']})", "ms", f["cpu_ms"], None))
    failed = [n for n, f in fig.items() if isinstance(f, dict) and "error" in f]
    if failed:
        rows.append(("handler import FAILED", "", ", ".join(failed), None))
    return rows


def _audit(fig: dict) -> list[Row]:
    rows: list[Row] = [(f"false failures in {fig['honest_tasks']} honest audits", "", fig["honest_false_failures"], None),
                       ("audit CPU / work CPU (re-score)", "", fig["rescore_cost_fraction"], None),
                       ("network overhead, 5 % audited (re-score)", "", fig["network_overhead_at_5pct_rescore"], None)]
    for mode, c in fig.get("cheats", {}).items():
        total = sum(c.values())
        rows.append((f"cheat '{mode}' caught", "audits", f"{c['fail']} / {total}", None))
    return rows


def _generic(fig: Any, limit: int = 6) -> list[Row]:
    rows: list[Row] = []
    if isinstance(fig, dict):
        for k, v in fig.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                rows.append((k, "", v, None))
            if len(rows) >= limit:
                break
    return rows


EXTRACTORS: dict[str, Callable[[dict], list[Row]]] = {
    "bench_gateway": _gateway, "bench_scheduler": _scheduler, "bench_agent": _agent,
    "bench_auth": _cases("µs", "p50_us"), "bench_did": _cases("µs", "p50_us"),
    "bench_telegram": _cases("ms", "p50_ms"), "bench_dispatch": _dispatch, "bench_billing": _billing,
    "bench_pubsub": _pubsub, "bench_rag": _rag, "bench_coldstart": _coldstart,
    "bench_audit": _audit,
}


def summary_rows(record: dict) -> list[tuple[str, str, str, str, str, str]]:
    """(benchmark, figure, unit, ours, peer, ratio) for every benchmark of the record."""
    out = []
    for name, res in record["results"].items():
        short = name.removeprefix("bench_")
        if "error" in res:
            out.append((short, f"FAILED ({res['error']})", "", "", "", ""))
            continue
        fig = res["figures"]
        try:
            rows = EXTRACTORS.get(name, _generic)(fig)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            rows = _generic(fig)  # a benchmark changed its figures: still show something
        for figure, unit, ours, peer in rows:
            ratio = ""
            # A ratio of an added latency that came out negative (noise at c=1) would mean nothing.
            if isinstance(ours, (int, float)) and isinstance(peer, (int, float)) and ours >= 0 and peer > 0:
                ratio = f"{ours / peer:.2f}"
            out.append((short, figure, unit, _num(ours), _num(peer), ratio))
    return out


def markdown_table(record: dict) -> str:
    lines = ["| benchmark | figure | unit | ig3 | peer, same run | ratio |", "|---|---|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in summary_rows(record)]
    return "\n".join(lines)


def machine_line(record: dict) -> str:
    m = record["machine"]
    load = m.get("load_average")
    load_s = f", load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the start" if load else ""
    runs: dict[str, list[str]] = {}
    for name, res in record["results"].items():
        runs.setdefault(res.get("started", record["started"]), []).append(name.removeprefix("bench_"))
    if len(runs) > 1:  # partial reruns merged into the record
        started = "; ".join(f"{', '.join(names) if len(names) < 4 else 'the others'} started {t}"
                            for t, names in sorted(runs.items()))
    else:
        started = f"run started {record['started']}"
    return (f"{m.get('processor')} ({m.get('machine')}), {m.get('cpus')} CPUs, "
            f"{m.get('memory_gib', '?')} GiB, {m.get('system')}, Python {m.get('python')}{load_s}; {started}")


def plots(record: dict) -> list[Path]:
    from bench.plot import line_chart

    out: list[Path] = []
    gw = record["results"].get("bench_gateway", {}).get("figures")
    if gw and gw.get("points"):
        pts = _points(gw)
        series: dict[str, list[tuple[float, float]]] = {}
        for c in sorted(pts):
            for target in ("ig3", "litellm", "direct"):
                if target in pts[c]:
                    for q in ("p50", "p99"):
                        series.setdefault(f"{target} {q}", []).append((c, pts[c][target][f"{q}_ms"]))
        path = line_chart(RESULTS / "gateway_latency.png", series, title="LLM GATEWAY LATENCY VS CONCURRENCY",
                          xlabel="CONCURRENT CLIENTS", ylabel="MS (END TO END, LOG SCALE)", log_x=True, log_y=True,
                          dashed={k for k in series if k.endswith("p50")})
        out.append(path)
    sch = record["results"].get("bench_scheduler", {}).get("figures")
    if sch and sch.get("scheduler"):
        rows = sch["scheduler"]
        series = {"p50": [(r["devices"], r["p50_ms"]) for r in rows],
                  "p99": [(r["devices"], r["p99_ms"]) for r in rows],
                  "mean": [(r["devices"], r["mean_ms"]) for r in rows]}
        path = line_chart(RESULTS / "scheduler_latency.png", series, title="SCHEDULER DECISION LATENCY VS FLEET SIZE",
                          xlabel="REGISTERED DEVICES", ylabel="MS PER DECISION", log_x=True, dashed={"p50"})
        out.append(path)
    # The plotted numbers as JSON too, for anyone who wants another chart.
    data = {"gateway": gw and gw.get("points"), "scheduler": sch and sch.get("scheduler")}
    (RESULTS / "plot_data.json").write_text(json.dumps(data, indent=2))
    return out


def section(record: dict, images: list[Path]) -> str:
    parts = [START, "", f"Latest `make bench` ({machine_line(record)}):", "", markdown_table(record), ""]
    for img in images:
        parts.append(f"![{img.stem.replace('_', ' ')}](bench/results/{img.name})")
    parts += ["", END]
    return "\n".join(parts)


def write(record: dict, *, readme: bool = False) -> str:
    RESULTS.mkdir(exist_ok=True)
    images = plots(record)
    text = section(record, images)
    (RESULTS / "latest.md").write_text(text + "\n")
    if readme:
        doc = README.read_text()
        if START in doc and END in doc:
            doc = doc[:doc.index(START)] + text + doc[doc.index(END) + len(END):]
        else:
            doc = doc.rstrip("\n") + "\n\n## Benchmarks\n\n" + text + "\n"
        README.write_text(doc)
    return text


def main(argv: list[str]) -> int:
    record = json.loads((RESULTS / "latest.json").read_text())
    print(markdown_table(record))
    write(record, readme="--readme" in argv)
    print(f"\nwrote {RESULTS / 'latest.md'} and the plots in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
