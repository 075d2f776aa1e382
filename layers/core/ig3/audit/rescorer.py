"""The cloud's reference auditor: llama.cpp copies of the network's model files, by sha256.

Adapts ``ig3_edge.scoring.Rescorer`` (the same code an auditing device runs) to the ``Auditor``
port. Files are found in a directory (env ``IG3_AUDIT_MODELS_DIR``) and indexed by their sha256,
which is what tasks pin: an auditor can only vouch for the exact file the device claimed.
llama_cpp is imported only when the first audit of a model runs.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ig3.audit.verdict import RescoreEvidence


class ReferenceAuditor:
    name = "cloud-reference"

    def __init__(self, model_paths: list[str | Path], *, n_threads: int = 1, n_ctx: int = 2048):
        from ig3_edge.models import read_gguf

        self._paths: dict[str, Path] = {}
        for p in model_paths:
            self._paths[read_gguf(Path(p)).sha256] = Path(p)  # reads the header and hashes the file
        self._n_threads = n_threads
        self._n_ctx = n_ctx
        self._scorers: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, models_dir: str | Path, **kw: Any) -> ReferenceAuditor:
        return cls(sorted(Path(models_dir).glob("*.gguf")), **kw)

    def hashes(self) -> list[str]:
        return sorted(self._paths)

    def serves(self, model_hash: str) -> bool:
        return model_hash in self._paths

    def _scorer(self, model_hash: str) -> Any:
        with self._lock:
            s = self._scorers.get(model_hash)
            if s is None:
                from ig3_edge.scoring import Rescorer

                s = self._scorers[model_hash] = Rescorer(
                    self._paths[model_hash], n_threads=self._n_threads, n_ctx=self._n_ctx
                )
            return s

    def score(self, job: Any) -> RescoreEvidence:
        report = self._scorer(job.model_hash).score(
            messages=job.input.messages,
            prompt=job.input.prompt,
            output=job.output,
            limits=job.limits,
            finish_reason=job.finish_reason,
        )
        return RescoreEvidence.from_mapping(report.as_dict())

    def regenerate(self, job: Any) -> str:
        return self._scorer(job.model_hash).regenerate(
            messages=job.input.messages, prompt=job.input.prompt, limits=job.limits
        )

    def close(self) -> None:
        with self._lock:
            for s in self._scorers.values():
                s.close()
            self._scorers.clear()
