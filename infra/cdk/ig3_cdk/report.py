"""Size report of one synth: unzipped Lambda artifacts (function + layers) and the image estimate.

Sizes come from the bundles themselves (``infra/cdk/build/bundles/<key>``), so the numbers are
what Lambda unpacks. An image's size is an *estimate*: the installed size of its pinned
distributions in this environment plus its base image (and the adapter, for the web-adapter images).
For the audit image the llama.cpp libraries are this machine's build of the same pinned sdist; the
reference models are not in the image (they go to /tmp at run time).
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path
from typing import TextIO

from ig3_cdk.packaging import BUILT, CACHE, tree_size, GOAL_BYTES, LAMBDA_LIMIT_BYTES

BASE_IMAGE_BYTES = 125 * 2**20  # python:3.11-slim-bookworm, uncompressed
ADAPTER_BYTES = 6 * 2**20  # aws-lambda-adapter 0.9 extension binary
# public.ecr.aws/lambda/python:3.11 (Amazon Linux 2, Python, the runtime interface client, boto3),
# uncompressed: roughly 0.55 GB (approximate; not measured on this machine, which has no Docker).
LAMBDA_BASE_IMAGE_BYTES = 560 * 2**20
# Image kind (Function.image) -> the bytes under its pinned distributions.
IMAGE_BASE_BYTES = {"lambda-web-adapter": BASE_IMAGE_BYTES + ADAPTER_BYTES, "audit": LAMBDA_BASE_IMAGE_BYTES}


def _dist_size(name: str) -> int:
    dist = metadata.distribution(name)
    total = 0
    for f in dist.files or []:
        try:
            total += (dist.locate_file(f)).stat().st_size
        except OSError:
            pass
    return total


def image_estimate(requirements_txt: Path, image: str = "lambda-web-adapter") -> int:
    names = re.findall(r"(?m)^([A-Za-z0-9][A-Za-z0-9._-]*)==", requirements_txt.read_text())
    return IMAGE_BASE_BYTES[image] + sum(_dist_size(n) for n in names)


def sizes(_assembly_dir: str, stateless) -> dict:
    compute = stateless.compute
    bundle = {name: BUILT.get(name) or (tree_size(CACHE / art.key()) if (CACHE / art.key()).is_dir() else None)
              for name, art in compute.assets.items()}
    rows = []
    for fn_name, fn in compute.functions.items():
        if fn_name in compute.images:
            img = compute.images[fn_name]
            req = img["context"] / "requirements.txt"
            rows.append({"artifact": f"{fn_name} (image, estimate)",
                         "bytes": image_estimate(req, img.get("image", "lambda-web-adapter")), "image": True})
            continue
        own = bundle.get(f"fn-{fn_name}")
        layer_names = compute.function_layers.get(fn_name, ())
        layers = [bundle.get(f"layer-{n}") for n in layer_names]
        total = None if own is None or None in layers else own + sum(layers)
        rows.append({"artifact": fn_name, "function_bytes": own, "layers": list(layer_names), "bytes": total,
                     "image": False})
    for name, size in bundle.items():
        if name.startswith("layer-"):
            rows.append({"artifact": name, "bytes": size, "image": False})
    return {"rows": rows, "mode": stateless.packager.mode}


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:7.1f}"


def print_report(report: dict, *, settings, synth_s: float, stream: TextIO = sys.stdout) -> None:
    print(f"\nig3 {settings.stage} synth: {synth_s:.1f} s, bundling mode {report['mode']}, "
          f"arch {settings.architecture}", file=stream)
    print(f"{'artifact':34} {'unzipped MB':>11}  {'limit 250':>9}  {'goal 60':>7}", file=stream)
    for r in report["rows"]:
        b = r["bytes"]
        within = "-" if b is None or r["image"] else ("ok" if b <= LAMBDA_LIMIT_BYTES else "OVER")
        goal = "-" if b is None or r["image"] else ("ok" if b <= GOAL_BYTES else "over")
        label = r["artifact"] + (f" (+{'+'.join(r['layers'])})" if r.get("layers") else "")
        print(f"{label:34} {_mb(b):>11}  {within:>9}  {goal:>7}", file=stream)
    if report["mode"] != "full":
        print("(source mode: dependencies not installed, sizes are source only; run `make synth` for real sizes)",
              file=stream)
