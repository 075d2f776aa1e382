"""Fixtures for tests/identity: real Redis, moto server (DynamoDB + Secrets Manager), node + npm.

``identity_env`` points ig3.identity's factories at the session's moto resources, a per-test
Redis prefix and a per-test signing-key secret, so tests never share state with each other
or with other engineers' runs on the same Redis.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

INTEROP_DIR = Path(__file__).parent / "interop"


@pytest.fixture
def identity_env(aws_env, redis_url, redis_prefix, monkeypatch):
    """Env for ig3.identity.service: public host, per-test secret id and Redis prefix."""
    from ig3.identity import service

    monkeypatch.setenv("IG3_PUBLIC_HOST", "127.0.0.1:8080")
    monkeypatch.setenv("IG3_JWT_SECRET_ID", f"ig3/test/jwt-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("IG3_IDENTITY_REDIS_PREFIX", redis_prefix)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("IG3_EVM_RPC_URLS", raising=False)
    service.reset()
    yield dict(os.environ)
    service.reset()


@pytest.fixture(scope="session")
def siwe_js():
    """Run the reference implementation (siwe + ethers, installed by `npm ci` from the lock file)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("node and npm are required for the SIWE interoperability test")
    marker = INTEROP_DIR / "node_modules" / ".package-lock.json"
    lock = INTEROP_DIR / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=INTEROP_DIR, check=True,
                       timeout=240)

    def run(mode: str, payload: list[dict]) -> list[dict]:
        proc = subprocess.run([node, "siwe_interop.js", mode], cwd=INTEROP_DIR, input=json.dumps(payload),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    return run
