"""LiteLLM's own proxy in its own virtualenv (``bench/.venvs/litellm-proxy``), for comparison runs.

Installed from PyPI with exact pins and hashes (``bench/litellm-proxy.lock``, compiled from
``bench/litellm-proxy.in``; litellm has had malicious releases). Kept out of the project's
venv: the proxy extra pulls FastAPI, gunicorn, prisma... none of which the gateway ships.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
VENV = HERE / ".venvs" / "litellm-proxy"
LOCK = HERE / "litellm-proxy.lock"
STAMP = VENV / ".installed"


def python() -> pathlib.Path:
    return VENV / "bin" / "python"


def ensure(quiet: bool = True) -> pathlib.Path:
    """Create/refresh the venv when the lock changed; returns the venv's python."""
    lock_text = LOCK.read_text()
    if STAMP.exists() and STAMP.read_text() == lock_text and python().exists():
        return python()
    if VENV.exists():
        shutil.rmtree(VENV)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    uv = shutil.which("uv") or str(pathlib.Path(sys.executable).parent / "uv")
    if os.path.exists(uv):
        cmd = [uv, "pip", "install", "--python", str(python()), "--require-hashes", "-r", str(LOCK)]
    else:
        cmd = [str(python()), "-m", "pip", "install", "--require-hashes", "-r", str(LOCK)]
    if quiet:
        cmd.insert(3 if cmd[0] == uv else 4, "-q")
    subprocess.run(cmd, check=True)
    STAMP.write_text(lock_text)
    return python()


if __name__ == "__main__":
    print(ensure(quiet=False))
