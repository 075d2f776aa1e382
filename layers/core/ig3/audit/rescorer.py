"""The cloud's reference auditor: llama.cpp copies of the network's model files, by sha256.

Adapts ``ig3_edge.scoring.Rescorer`` (the same code an auditing device runs) to the ``Auditor``
port. Model files come from a ``ModelStore`` (``ig3.audit.models``): a local directory
(``IG3_AUDIT_MODELS_DIR``) or the models bucket through a verified on-disk cache
(``IG3_AUDIT_MODELS_BUCKET``), indexed by the sha256 tasks pin: an auditor can only vouch for the exact
file the device claimed.

Models load lazily, for the hash a job pins, and stay loaded across invocations (a warm Lambda keeps
its llama.cpp context); at most ``max_loaded`` at a time (default 1: a model's weights and KV cache
are most of the function's memory), the least recently used one closed *before* the next is loaded
(but after its file was fetched and verified: a job pinning a missing or corrupted file leaves the warm
model loaded). Audits run one at a time per process (one lock): a forward pass is CPU-bound and a
Lambda environment gets one event at a time anyway. llama_cpp is imported only when the first audit
of a model runs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ig3.audit.models import LocalModelStore, ModelStore
from ig3.audit.verdict import RescoreEvidence


class ReferenceAuditor:
    name = "cloud-reference"

    def __init__(self, models: ModelStore | Iterable[str | Path], *, n_threads: int = 1, n_ctx: int = 2048,
                 max_loaded: int = 1):
        self.store: ModelStore = models if hasattr(models, "path") and hasattr(models, "has") \
            else LocalModelStore(models)  # type: ignore[arg-type]
        self._n_threads = n_threads
        self._n_ctx = n_ctx
        self._max_loaded = max(1, max_loaded)
        self._scorers: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.RLock()

    @classmethod
    def from_dir(cls, models_dir: str | Path, **kw: Any) -> ReferenceAuditor:
        return cls(LocalModelStore.from_dir(models_dir), **kw)

    def hashes(self) -> list[str]:
        return self.store.hashes()

    def serves(self, model_hash: str) -> bool:
        return self.store.has(model_hash)

    def loaded(self) -> list[str]:
        """The hashes whose llama.cpp model is loaded now, least recently used first."""
        with self._lock:
            return list(self._scorers)

    def _scorer(self, model_hash: str) -> Any:
        s = self._scorers.get(model_hash)
        if s is not None:
            self._scorers.move_to_end(model_hash)
            return s
        # Fetch first (disk, not memory): a missing or corrupted file then leaves the loaded model warm.
        path = self.store.path(model_hash)  # may download (verified) and evict other cached files
        while len(self._scorers) >= self._max_loaded:
            _, old = self._scorers.popitem(last=False)
            old.close()  # free its memory before the next model is mapped
        from ig3_edge.scoring import Rescorer

        s = self._scorers[model_hash] = Rescorer(
            path, sha256=model_hash, n_threads=self._n_threads, n_ctx=self._n_ctx
        )
        return s

    def score(self, job: Any) -> RescoreEvidence:
        with self._lock:
            report = self._scorer(job.model_hash).score(
                messages=job.input.messages,
                prompt=job.input.prompt,
                output=job.output,
                limits=job.limits,
                finish_reason=job.finish_reason,
            )
        return RescoreEvidence.from_mapping(report.as_dict())

    def regenerate(self, job: Any) -> str:
        with self._lock:
            return self._scorer(job.model_hash).regenerate(
                messages=job.input.messages, prompt=job.input.prompt, limits=job.limits
            )

    def close(self) -> None:
        with self._lock:
            for s in self._scorers.values():
                s.close()
            self._scorers.clear()
