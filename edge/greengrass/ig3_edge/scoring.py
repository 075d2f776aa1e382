"""Re-scoring a claimed output with llama.cpp logits: the auditor's side of verifiable work.

An auditor holding the same model file (same sha256) as the device that did a task runs ONE
forward pass over prompt + claimed output and reads, at every output position, the
distribution the model assigns to the next token. From it come the statistics the cloud's
verdict (``ig3.audit.verdict``) judges:

- **greedy** (temperature 0): is each claimed token the model's top choice? A claimed token whose
  log-probability is within ``tie_nats`` of the top one counts as the top choice (near-ties flip
  between CPU builds and batch sizes; the claimed prefix is teacher-forced, so one flip does not
  cascade).
- **sampled** (temperature > 0): the device samples from ``q`` = top-p nucleus (computed at
  temperature 1, as llama.cpp's sampler chain orders top-p before temperature) re-weighted at
  temperature T. For each claimed token the auditor computes its *surprise rank*
  ``u = q(tokens more likely than it) + q(it)/2`` (the probability integral transform, mid-point
  for the discrete case): for honest draws ``u`` is uniform on [0, 1] and independent across
  positions, whatever the distribution's shape. ``sum -log(1 - u)`` is then a sum of Exp(1)
  draws, a Gamma(n, 1) variable with an exact tail (``ig3.audit.verdict``). Why not the raw
  log-likelihood's z-score: at temperature 1 the honest log-likelihood has a heavy left tail (the
  sampler does emit rare tokens), its variance swamps the signal, and random text only scored
  z = -2..-4 on SmolLM2 in calibration; the bounded rank statistic separates them by orders of
  magnitude. Tokens outside the nucleus are impossible for an honest sampler and counted apart.
- If the device stopped on end-of-generation (no stop strings), the end token itself is one more
  position to check.

One forward pass costs about what the prompt's prefill costs the device; regeneration costs the
whole sequential decode again (``bench/bench_audit.py`` measures both). ``regenerate`` is here
for the cases re-scoring cannot decide.

The claimed text is re-tokenized canonically. A device's own token sequence may differ from the
canonical tokenization: a sampler can emit "S" + "mall" where the tokenizer writes "Small" (seen
in calibration at T=0.7), or byte pieces that do not form valid UTF-8. Such a position looks
improbable (even outside the nucleus) although the work was honest, so the per-position
surprises are returned and the verdict trims the most surprising 10% before testing.

This module ships to devices (an auditing device runs it): it imports ``ig3.wire``, numpy and,
lazily, ``llama_cpp`` only.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ig3.wire import ChatMessage, TaskLimits

# Log-probability gap under which a claimed token still counts as the top choice (greedy).
DEFAULT_TIE_NATS = 0.05
# Nucleus computed over the best candidates only (a full sort of a 49k vocabulary per position
# would dominate the audit's cost); falls back to a full sort when they do not reach top_p.
_NUCLEUS_CANDIDATES = 2048


@dataclass(frozen=True)
class ScoreReport:
    """What one forward pass says about a claimed output (fields mirror ``ig3.audit.verdict.RescoreEvidence``)."""

    model_hash: str
    prompt_tokens: int
    output_tokens: int  # positions checked (claimed tokens, + the end token when it was claimed)
    greedy_mismatches: int  # positions where the claimed token is not (within tie_nats of) the top choice
    log_likelihood: float  # sum of log p(token) at temperature 1
    surprise: float  # sum over in-nucleus positions of -log(1 - u), u = the token's mid-point rank under q
    surprise_positions: int  # how many positions that sum covers (Gamma(n, 1) under honesty)
    outside_nucleus: int  # claimed tokens an honest top-p sampler cannot produce
    surprises: tuple[float, ...]  # per position -log(1 - u); inf outside the nucleus (the verdict trims)
    temperature: float
    top_p: float
    duration_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log_softmax(rows: Any) -> Any:
    import numpy as np

    m = rows.max(axis=1, keepdims=True)
    shifted = rows - m
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _surprises_full_vocab(rows: Any, toks: Any, temperature: float) -> Any:
    """``-log(1 - u)`` for every position at once when there is no nucleus (top_p = 1)."""
    import numpy as np

    # float64: in float32, 1 - 1e-12 rounds to 1 and a rare token's surprise would become infinite.
    z = rows.astype(np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    q = np.exp(z)
    q /= q.sum(axis=1, keepdims=True)
    qt = q[np.arange(len(toks)), toks]
    above = np.where(q > qt[:, None], q, 0.0).sum(axis=1)
    u = np.minimum(above + qt / 2.0, 1.0 - 1e-12)
    return -np.log1p(-u)


def _position_surprise(logits: Any, token: int, temperature: float, top_p: float) -> float | None:
    """``-log(1 - u)`` for one position (``u``: the token's mid-point rank under q); None outside the nucleus."""
    import numpy as np

    logits = logits.astype(np.float64)  # see _surprises_full_vocab
    logp = logits - logits.max()
    logp = logp - math.log(float(np.exp(logp).sum()))
    if top_p < 1.0:
        k = min(_NUCLEUS_CANDIDATES, logp.shape[0])
        cand = np.argpartition(-logp, k - 1)[:k] if k < logp.shape[0] else np.arange(logp.shape[0])
        order = cand[np.argsort(-logp[cand], kind="stable")]
        cum = np.cumsum(np.exp(logp[order]))
        if cum[-1] < top_p and k < logp.shape[0]:
            order = np.argsort(-logp, kind="stable")
            cum = np.cumsum(np.exp(logp[order]))
        keep = int(np.searchsorted(cum, top_p)) + 1  # the token that crosses top_p is kept (llama.cpp)
        nucleus = order[: max(1, keep)]
        where = np.nonzero(nucleus == token)[0]
        if where.size == 0:
            return None
        z = logits[nucleus] / temperature
        idx = int(where[0])
    else:
        z = logits / temperature
        idx = token
    z = z - z.max()
    q = np.exp(z)
    q /= q.sum()
    qt = float(q[idx])
    above = float(q[q > qt].sum())
    u = min(above + qt / 2.0, 1.0 - 1e-12)
    return -math.log1p(-u)


class _OneModel:
    """A model registry of exactly one file (what ``LlamaCppBackend`` reads)."""

    def __init__(self, model: Any):
        self._model = model

    def get(self, name: str) -> Any:
        return self._model if name == self._model.name else None

    def all(self) -> list[Any]:
        return [self._model]


class Rescorer:
    """Scores claimed outputs of one model file. Thread-safe (one context, used under a lock).

    ``prompt_tokens`` are built exactly as the llama.cpp backend builds them (its chat template
    path is reused), so the auditor sees the prompt the device saw.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        n_threads: int = 1,
        tie_nats: float = DEFAULT_TIE_NATS,
        sha256: str | None = None,
    ):
        # sha256: the file's hash when the caller already verified it (the cloud's model cache hashes
        # while downloading), so a multi-GB file is not hashed twice; else it is computed here.
        from ig3_edge.backends.llama_cpp import LlamaCppBackend
        from ig3_edge.models import read_gguf

        self.model = read_gguf(Path(model_path), sha256=sha256)
        self.model_hash = self.model.sha256
        self.tie_nats = tie_nats
        self._n_ctx = min(n_ctx, self.model.ctx or n_ctx)
        self._n_threads = n_threads
        self._lock = threading.Lock()
        self._llm: Any = None
        # The device's own backend over exactly this file: its prompt builder for scoring (so the
        # auditor sees the prompt the device saw) and its generation loop for regeneration.
        self._backend = LlamaCppBackend(_OneModel(self.model), n_ctx=self._n_ctx, n_threads=n_threads)

    def _context(self) -> Any:
        if self._llm is None:
            import llama_cpp

            # n_threads_batch explicitly: its default (all cores) spin-waits on a busy machine.
            self._llm = llama_cpp.Llama(
                model_path=str(self.model.path),
                n_ctx=self._n_ctx,
                n_batch=512,
                n_threads=self._n_threads,
                n_threads_batch=self._n_threads,
                logits_all=True,
                verbose=False,
            )
        return self._llm

    def prompt_tokens(self, *, messages: list[ChatMessage] | None, prompt: str | None) -> list[int]:
        llm = self._context()
        if messages is not None:
            return list(self._backend._chat_prompt(self.model, llm, messages))  # noqa: SLF001
        return list(llm.tokenize((prompt or "").encode("utf-8"), add_bos=True, special=False))

    def score(
        self,
        *,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        output: str,
        limits: TaskLimits,
        finish_reason: str | None = None,
    ) -> ScoreReport:
        """One forward pass over prompt + claimed output; raises ``ValueError`` if it cannot fit the context."""
        import numpy as np

        t0 = time.perf_counter()
        with self._lock:
            llm = self._context()
            ptoks = self.prompt_tokens(messages=messages, prompt=prompt)
            otoks = list(llm.tokenize(output.encode("utf-8"), add_bos=False, special=False)) if output else []
            if finish_reason == "stop" and not limits.stop:
                otoks.append(int(llm.token_eos()))  # the device claims the model chose to end here
            if not ptoks:
                raise ValueError("empty prompt")
            total = len(ptoks) + len(otoks)
            if total > llm.n_ctx():
                raise ValueError(
                    f"prompt + output is {total} tokens; the auditor's context holds {llm.n_ctx()}"
                )
            llm.reset()
            # The prompt's logits are never read (but the last): computing the output projection
            # (vocabulary x hidden) for every prompt row would cost ~25% more for nothing.
            llm._logits_all = False  # noqa: SLF001 — llama-cpp-python reads this per eval() call
            try:
                if len(ptoks) > 1:
                    llm.eval(ptoks[:-1])
            finally:
                llm._logits_all = True  # noqa: SLF001
            llm.eval(ptoks[-1:] + otoks)
            # Row i of the scores predicts token i+1: the output's predictions start at the prompt's last token.
            rows = np.array(llm.scores[len(ptoks) - 1 : total - 1], dtype=np.float32)
        n = len(otoks)
        if n == 0:
            return ScoreReport(
                self.model_hash,
                len(ptoks),
                0,
                0,
                0.0,
                0.0,
                0,
                0,
                (),
                limits.temperature,
                limits.top_p,
                (time.perf_counter() - t0) * 1000.0,
            )
        toks = np.asarray(otoks)
        logp = _log_softmax(rows)
        claimed = logp[np.arange(n), toks]
        best = logp.max(axis=1)
        mismatches = int(((best - claimed) > self.tie_nats).sum())
        temp = limits.temperature if limits.temperature > 0 else 1.0
        surprise = 0.0
        covered = outside = 0
        per_position: list[float] = []
        fast = _surprises_full_vocab(rows, toks, temp) if limits.top_p >= 1.0 else None
        for i in range(n):
            value = (
                float(fast[i])
                if fast is not None
                else _position_surprise(rows[i], int(toks[i]), temp, limits.top_p)
            )
            if value is None:
                outside += 1
                per_position.append(math.inf)
                continue
            per_position.append(round(value, 4))
            surprise += value
            covered += 1
        return ScoreReport(
            model_hash=self.model_hash,
            prompt_tokens=len(ptoks),
            output_tokens=n,
            greedy_mismatches=mismatches,
            log_likelihood=float(claimed.sum()),
            surprise=surprise,
            surprise_positions=covered,
            outside_nucleus=outside,
            surprises=tuple(per_position),
            temperature=limits.temperature,
            top_p=limits.top_p,
            duration_ms=(time.perf_counter() - t0) * 1000.0,
        )

    def regenerate(
        self, *, messages: list[ChatMessage] | None, prompt: str | None, limits: TaskLimits
    ) -> str:
        """Run the task again with the device's own generation loop (the fallback when scores cannot decide)."""
        with self._lock:
            gen = self._backend.generate(
                self.model.name,
                messages=messages,
                prompt=prompt,
                limits=limits,
                on_delta=lambda _d: None,
                should_stop=lambda: None,
            )
        return gen.text

    def close(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
            self._backend.close()
