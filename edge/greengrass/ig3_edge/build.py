"""Build the component artifact: ``python -m ig3_edge.build [--out DIR] [--gdk]``.

Produces the layout ``gdk component build`` produces (and ``gdk component publish`` uploads):
  greengrass-build/artifacts/com.ig3.EdgeAgent/<version>/ig3-edge-agent.zip
  greengrass-build/recipes/recipe.yaml
The zip holds ``ig3_edge/`` (this package), ``ig3/wire.py`` (the shared protocol module, with an
empty ``ig3/__init__.py``: nothing else of the cloud library goes to the device) and
``requirements-edge.lock`` (what the recipe's install step installs, hashes enforced).

Design decisions:
- Deterministic: sorted entries, fixed timestamps and modes, so one source tree always gives
  the same sha256 and an unchanged agent does not trigger a redeployment.
- It refuses to build when a module in the zip imports a cloud-only package (boto3, botocore,
  litellm, aws_lambda_powertools, web3): the device never carries them.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import io
import shutil
import sys
import zipfile
from pathlib import Path

COMPONENT = "com.ig3.EdgeAgent"
ARTIFACT = "ig3-edge-agent.zip"
FORBIDDEN = {"boto3", "botocore", "litellm", "aws_lambda_powertools", "web3"}
_EPOCH = (2020, 1, 1, 0, 0, 0)

EDGE_DIR = Path(__file__).resolve().parents[1]  # edge/greengrass


def _sources() -> list[tuple[str, bytes]]:
    import ig3.wire

    pkg = Path(__file__).resolve().parent
    files = [(f"ig3_edge/{p.relative_to(pkg).as_posix()}", p.read_bytes())
             for p in sorted(pkg.rglob("*.py")) if "__pycache__" not in p.parts]
    files.append(("ig3/__init__.py", b'"""Only the wire protocol of the cloud library ships to devices."""\n'))
    files.append(("ig3/wire.py", Path(ig3.wire.__file__).read_bytes()))
    files.append(("requirements-edge.lock", (EDGE_DIR / "requirements-edge.lock").read_bytes()))
    return files


def forbidden_imports(name: str, source: bytes) -> set[str]:
    """Top-level package names of cloud-only imports in one module (static, includes lazy imports)."""
    found = set()
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & FORBIDDEN


def build_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in _sources():
            if name.endswith(".py") and (bad := forbidden_imports(name, data)):
                raise SystemExit(f"{name} imports cloud-only packages {sorted(bad)}: not for the device")
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def recipe_version(recipe: Path) -> str:
    import yaml

    return str(yaml.safe_load(recipe.read_text())["ComponentVersion"])


def build(out: Path) -> tuple[Path, Path, str]:
    """-> (zip path, recipe path, sha256 of the zip)."""
    recipe = EDGE_DIR / "recipe.yaml"
    version = recipe_version(recipe)
    data = build_zip()
    artifacts = out / "artifacts" / COMPONENT / version
    recipes = out / "recipes"
    for d in (artifacts, recipes):
        d.mkdir(parents=True, exist_ok=True)
    zip_path = artifacts / ARTIFACT
    zip_path.write_bytes(data)
    recipe_out = recipes / "recipe.yaml"
    shutil.copyfile(recipe, recipe_out)
    return zip_path, recipe_out, hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ig3_edge.build", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=EDGE_DIR / "greengrass-build")
    p.add_argument("--gdk", action="store_true", help="write to ./greengrass-build (gdk runs us in the project dir)")
    a = p.parse_args(argv)
    out = Path("greengrass-build") if a.gdk else a.out
    zip_path, recipe_out, digest = build(out)
    print(f"{zip_path} sha256={digest}\n{recipe_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
