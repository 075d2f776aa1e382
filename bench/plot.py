"""Line charts as PNG with the standard library only (zlib + struct), for ``make bench``.

matplotlib is not in the lock, and two small charts do not justify it: axes, ticks, a legend and
polylines on an RGB canvas, text in a built-in 5x7 bitmap font (upper case, digits, a few signs),
written as an 8-bit RGB PNG. x and y may be logarithmic (concurrency 1/16/64, fleet 1k..100k;
latencies that differ 100x between the series).
"""
from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

_GLYPHS = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
    " ": (".....",) * 7,
    ".": (".....", ".....", ".....", ".....", ".....", ".##..", ".##.."),
    ",": (".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."),
    ":": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."),
    "-": (".....", ".....", ".....", "#####", ".....", ".....", "....."),
    "+": (".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."),
    "/": (".....", "....#", "...#.", "..#..", ".#...", "#....", "....."),
    "(": ("...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."),
    ")": (".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."),
    "%": ("##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"),
    "=": (".....", ".....", "#####", ".....", "#####", ".....", "....."),
    "<": ("...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#."),
    ">": (".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#..."),
    "_": (".....", ".....", ".....", ".....", ".....", ".....", "#####"),
    "'": ("..#..", "..#..", ".#...", ".....", ".....", ".....", "....."),
    "?": (".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."),
}
PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75))
WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (20, 20, 20), (120, 120, 120), (225, 225, 225)


class Canvas:
    def __init__(self, width: int, height: int, background: tuple[int, int, int] = WHITE):
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def dot(self, x: int, y: int, color: tuple[int, int, int], size: int = 1) -> None:
        for dy in range(size):
            for dx in range(size):
                px, py = x + dx - size // 2, y + dy - size // 2
                if 0 <= px < self.width and 0 <= py < self.height:
                    i = (py * self.width + px) * 3
                    self.pixels[i:i + 3] = bytes(color)

    def line(self, x0: float, y0: float, x1: float, y1: float, color: tuple[int, int, int], width: int = 1) -> None:
        steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for s in range(steps + 1):
            t = s / steps
            self.dot(round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t), color, width)

    def rect(self, x: int, y: int, w: int, h: int, color: tuple[int, int, int]) -> None:
        for yy in range(max(0, y), min(self.height, y + h)):
            start = (yy * self.width + max(0, x)) * 3
            end = (yy * self.width + min(self.width, x + w)) * 3
            self.pixels[start:end] = bytes(color) * ((end - start) // 3)

    def text(self, x: int, y: int, s: str, color: tuple[int, int, int] = BLACK, scale: int = 2,
             anchor: str = "left") -> None:
        w = text_width(s, scale)
        x = x - w if anchor == "right" else x - w // 2 if anchor == "center" else x
        for ch in s.upper():
            glyph = _GLYPHS.get(ch, _GLYPHS["?"])
            for row, bits in enumerate(glyph):
                for col, bit in enumerate(bits):
                    if bit == "#":
                        self.rect(x + col * scale, y + row * scale, scale, scale, color)
            x += 6 * scale

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.pixels[y * self.width * 3:(y + 1) * self.width * 3])
                       for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def text_width(s: str, scale: int = 2) -> int:
    return len(s) * 6 * scale - scale


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - step * 1e-9:  # the last tick at or above the highest value
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _fmt(v: float) -> str:
    if 0 < v < 1:
        return f"{v:g}"
    if v >= 1000 and v % 1000 == 0:
        return f"{int(v // 1000)}K"
    if v == int(v):
        return str(int(v))
    return f"{v:g}"


def line_chart(path: Path, series: dict[str, list[tuple[float, float]]], *, title: str, xlabel: str, ylabel: str,
               log_x: bool = False, log_y: bool = False, width: int = 820, height: int = 500, dashed: set[str] = frozenset()) -> Path:
    """Write a PNG: one polyline with markers per series, ticks at the x values, a legend."""
    c = Canvas(width, height)
    left, right, top, bottom = 90, 30, 70, 80
    pw, ph = width - left - right, height - top - bottom
    xs = sorted({x for pts in series.values() for x, _ in pts})
    ys = [y for pts in series.values() for _, y in pts if y is not None and math.isfinite(y)]
    if log_y:  # decades: a 100x spread between the series stays readable
        ys = [y for y in ys if y > 0]
        lo_exp = math.floor(math.log10(min(ys))) if ys else 0
        hi_exp = math.ceil(math.log10(max(ys))) if ys else 1
        y_ticks = [10.0 ** e for e in range(lo_exp, max(hi_exp, lo_exp + 1) + 1)]
    else:
        y_ticks = _nice_ticks(0.0, max(ys) if ys else 1.0)
    y_hi = y_ticks[-1]
    fx = (lambda x: math.log10(x)) if log_x else (lambda x: x)
    x_lo, x_hi = fx(xs[0]), fx(xs[-1])
    pad = (x_hi - x_lo) * 0.06 or 1.0

    def px(x: float) -> float:
        return left + (fx(x) - x_lo + pad) / (x_hi - x_lo + 2 * pad) * pw

    def py(y: float) -> float:
        if log_y:
            lo, hi = math.log10(y_ticks[0]), math.log10(y_hi)
            return top + ph - (math.log10(max(y, y_ticks[0])) - lo) / (hi - lo) * ph
        return top + ph - y / y_hi * ph

    c.text(width // 2, 12, title, scale=2, anchor="center")
    for t in y_ticks:
        c.line(left, py(t), left + pw, py(t), LIGHT)
        c.text(left - 8, round(py(t)) - 7, _fmt(t), GREY, scale=2, anchor="right")
    for x in xs:
        c.line(px(x), top, px(x), top + ph, LIGHT)
        c.text(round(px(x)), top + ph + 8, _fmt(x), GREY, scale=2, anchor="center")
    c.line(left, top, left, top + ph, BLACK, 2)
    c.line(left, top + ph, left + pw, top + ph, BLACK, 2)
    c.text(left + pw // 2, height - 34, xlabel, scale=2, anchor="center")
    c.text(8, top - 32, ylabel, scale=2)
    legend_y = top + 6
    # One colour per subject (the first word: "ig3 p50" and "ig3 p99" share it; p50 is dashed).
    subjects = list(dict.fromkeys(name.split()[0] for name in series))
    grouped = len(subjects) > 1 and all(len(name.split()) > 1 for name in series)
    shown: set[str] = set()
    for name, pts in series.items():
        color = PALETTE[subjects.index(name.split()[0]) % len(PALETTE)] if grouped else \
            PALETTE[list(series).index(name) % len(PALETTE)]
        pts = sorted((x, y) for x, y in pts if y is not None and math.isfinite(y) and (y > 0 or not log_y))
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if name in dashed:
                n = 12
                for k in range(0, n, 2):
                    a, b = k / n, (k + 1) / n
                    c.line(px(x0) + (px(x1) - px(x0)) * a, py(y0) + (py(y1) - py(y0)) * a,
                           px(x0) + (px(x1) - px(x0)) * b, py(y0) + (py(y1) - py(y0)) * b, color, 3)
            else:
                c.line(px(x0), py(y0), px(x1), py(y1), color, 3)
        for x, y in pts:
            c.dot(round(px(x)), round(py(y)), color, 9)
        label = name.split()[0] if grouped else name
        if label not in shown:
            shown.add(label)
            c.rect(left + 16, legend_y + 2, 22, 10, color)
            c.text(left + 46, legend_y, label, BLACK, scale=2)
            legend_y += 22
    if dashed and grouped:
        c.text(left + 16, legend_y, "DASHED P50, SOLID P99", GREY, scale=2)
    path.write_bytes(c.png())
    return path
