"""``make bench``'s summary: the ratio against the peer of the same run, and a PNG that decodes."""
from __future__ import annotations

import struct
import zlib

from bench.plot import line_chart
from bench.report import markdown_table, summary_rows


def _gateway_point(added50: float, added99: float, rps: float) -> dict:
    return {"p50_ms": 1 + added50, "p99_ms": 2 + added99, "rps": rps, "added_p50_ms": added50,
            "added_p99_ms": added99, "cpu_ms_per_req": 0.5}


RECORD = {
    "started": "2026-11-26T16:00:00Z",
    "machine": {"processor": "cpu", "machine": "x86_64", "cpus": 2, "system": "Linux", "python": "3.11"},
    "results": {
        "bench_gateway": {"figures": {"import": {"wall_ms": 100.0}, "points": {
            "1": {"direct": _gateway_point(0, 0, 900), "ig3": _gateway_point(0.5, 1.0, 800),
                  "litellm": _gateway_point(2.0, 8.0, 300)}}}},
        "bench_scheduler": {"figures": {"scheduler": [
            {"devices": 1000, "p50_ms": 1.0, "p99_ms": 2.0, "mean_ms": 1.1, "decisions_per_s": 900},
            {"devices": 100000, "p50_ms": 1.2, "p99_ms": 2.5, "mean_ms": 1.3, "decisions_per_s": 800}]}},
        "bench_auth": {"error": "exit 1", "seconds": 3.0},
    },
}


def test_rows_carry_the_peer_and_the_ratio_of_the_same_run():
    rows = {(b, f): (ours, peer, ratio) for b, f, _, ours, peer, ratio in summary_rows(RECORD)}
    assert rows[("gateway", "added p99 over direct, c=1")] == ("1.00", "8.00", "0.12")
    assert rows[("gateway", "throughput, c=1")] == ("800", "300", "2.67")
    assert rows[("scheduler", "decision p50 / p99, 100,000 devices")][0] == "1.2 / 2.5"
    assert ("auth", "FAILED (exit 1)") in rows
    assert markdown_table(RECORD).count("\n") == len(rows) + 1


def test_a_benchmark_whose_figures_changed_still_gets_rows():
    record = {**RECORD, "results": {"bench_gateway": {"figures": {"points": "unexpected", "rps": 5.0}}}}
    assert summary_rows(record) == [("gateway", "rps", "", "5.00", "–", "")]


def test_chart_is_a_valid_png(tmp_path):
    path = line_chart(tmp_path / "c.png", {"ig3 p50": [(1, 1.0), (16, 3.0)], "ig3 p99": [(1, 2.0), (16, 9.5)]},
                      title="T", xlabel="X", ylabel="Y", log_x=True, width=300, height=200)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    raw = zlib.decompress(chunks[b"IDAT"])
    assert (width, height) == (300, 200) and len(raw) == height * (1 + width * 3)
    assert len(set(raw)) > 3  # something was drawn on the white canvas
