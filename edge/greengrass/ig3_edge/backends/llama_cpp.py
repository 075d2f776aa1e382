"""llama.cpp in-process (llama-cpp-python): chat, completion, embeddings with real token streaming.

Design decisions:
- A ``llama_cpp.Llama`` context is not thread-safe, so each model has a small pool of
  contexts, at most one per executor slot, created lazily on first use (weights are
  memory-mapped, so extra contexts share the file's pages and only add a KV cache).
- The token loop is ours, on ``Llama.generate``: we count prompt and completion tokens
  exactly, stamp the first token, stop on end-of-generation tokens, stop strings, max tokens,
  the context size, cancellation and the deadline between any two tokens, and decode UTF-8
  incrementally so a character split across tokens is never emitted half-way.
- Chat prompts use the model's own chat template (GGUF ``tokenizer.chat_template``) through
  llama-cpp-python's Jinja2 formatter — the same rendering its chat API uses.
- Sampling follows the OpenAI semantics the cloud speaks: temperature and top_p only
  (temperature 0 = greedy); llama.cpp's extra samplers (top_k, min_p) are switched off.
- ``llama_cpp`` is imported lazily: discovery and the heartbeat work without loading it.
"""
from __future__ import annotations

import codecs
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ig3.wire import ChatMessage, ModelInfo, TaskLimits
from ig3_edge.backends.base import DeltaSink, Embeddings, Generation, StopCheck, StopStringFilter, TaskError
from ig3_edge.models import LocalModel, ModelRegistry

log = logging.getLogger("ig3_edge.llama_cpp")


@dataclass
class _Pool:
    """Contexts of one model in one mode (generation or embedding)."""

    model: LocalModel
    embedding: bool
    max_size: int
    cond: threading.Condition = field(default_factory=threading.Condition)
    idle: list[Any] = field(default_factory=list)
    created: int = 0
    closed: bool = False


class LlamaCppBackend:
    name = "llama-cpp"

    def __init__(self, registry: ModelRegistry, *, slots: int = 1, n_threads: int = 1, n_ctx: int = 2048,
                 n_batch: int = 512):
        self.registry = registry
        self.slots = max(1, slots)
        self.n_threads = max(1, n_threads)
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self._pools: dict[tuple[str, bool], _Pool] = {}
        self._lock = threading.Lock()
        self._formatters: dict[str, Any] = {}

    # -- models -------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return [m.info() for m in self.registry.all()]

    def refresh(self) -> bool:
        added, removed = self.registry.scan()
        for m in removed:
            self._drop(m)
        for m in added:
            log.info("model added: %s (%s, %s)", m.name, m.path.name, m.quant)
        return bool(added or removed)

    def model_hash(self, model: str) -> str | None:
        m = self.registry.get(model)
        return m.sha256 if m else None

    def _model(self, name: str) -> LocalModel:
        m = self.registry.get(name)
        if m is None:
            raise TaskError("model_not_found", f"model {name!r} is not on this device", retryable=True)
        return m

    def _drop(self, model: LocalModel) -> None:
        with self._lock:
            pools = [p for k, p in self._pools.items() if p.model.path == model.path]
            for k in [k for k, p in self._pools.items() if p.model.path == model.path]:
                del self._pools[k]
            self._formatters.pop(model.name, None)
        for pool in pools:
            with pool.cond:
                pool.closed = True
                idle, pool.idle = pool.idle, []
            for llm in idle:
                llm.close()
        log.info("model removed: %s", model.name)

    # -- contexts -----------------------------------------------------------------------
    def _pool(self, model: LocalModel, embedding: bool) -> _Pool:
        key = (model.name, embedding)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None or pool.model.sha256 != model.sha256:
                pool = self._pools[key] = _Pool(model=model, embedding=embedding, max_size=self.slots)
            return pool

    def _acquire(self, pool: _Pool) -> Any:
        with pool.cond:
            while not pool.idle and pool.created >= pool.max_size:
                pool.cond.wait()
            if pool.idle:
                return pool.idle.pop()
            pool.created += 1
        try:
            return self._load(pool.model, pool.embedding)
        except Exception as exc:
            with pool.cond:
                pool.created -= 1
                pool.cond.notify()
            raise TaskError("model_load_failed", f"could not load {pool.model.name}: {exc}",
                            retryable=True) from exc

    def _release(self, pool: _Pool, llm: Any) -> None:
        with pool.cond:
            if pool.closed:
                llm.close()
                return
            pool.idle.append(llm)
            pool.cond.notify()

    def _load(self, model: LocalModel, embedding: bool) -> Any:
        import llama_cpp

        t0 = time.perf_counter()
        llm = llama_cpp.Llama(
            model_path=str(model.path),
            n_ctx=min(self.n_ctx, model.ctx or self.n_ctx),
            n_batch=self.n_batch,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            embedding=embedding,
            verbose=False,
        )
        log.info("loaded %s (%s) in %.0f ms", model.name, "embedding" if embedding else "generation",
                 (time.perf_counter() - t0) * 1000)
        return llm

    def warmup(self, model: str) -> None:
        m = self._model(model)
        if "completion" in m.kinds or "chat" in m.kinds:
            self.generate(model, messages=None, prompt="Hi", limits=TaskLimits(max_tokens=1),
                          on_delta=lambda _d: None, should_stop=lambda: None)
        if "embedding" in m.kinds:
            self.embed(model, ["Hi"])

    # -- work ---------------------------------------------------------------------------
    def _chat_prompt(self, model: LocalModel, llm: Any, messages: list[ChatMessage]) -> list[int]:
        if not model.chat_template:
            raise TaskError("unsupported_kind", f"model {model.name} has no chat template")
        formatter = self._formatters.get(model.name)
        if formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            formatter = Jinja2ChatFormatter(template=model.chat_template, eos_token=model.eos_token or "",
                                            bos_token=model.bos_token or "")
            self._formatters[model.name] = formatter
        try:
            rendered = formatter(messages=[m.model_dump() for m in messages])
        except Exception as exc:  # the template may reject a message sequence (e.g. roles out of order)
            raise TaskError("bad_task", f"chat template rejected the messages: {exc}") from exc
        return llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)

    def generate(
        self,
        model: str,
        *,
        messages: list[ChatMessage] | None,
        prompt: str | None,
        limits: TaskLimits,
        on_delta: DeltaSink,
        should_stop: StopCheck,
    ) -> Generation:
        import llama_cpp

        m = self._model(model)
        t0 = time.perf_counter()
        pool = self._pool(m, embedding=False)
        llm = self._acquire(pool)
        try:
            if messages is not None:
                tokens = self._chat_prompt(m, llm, messages)
            else:
                if "completion" not in m.kinds:
                    raise TaskError("unsupported_kind", f"model {m.name} does not do completion")
                tokens = llm.tokenize((prompt or "").encode("utf-8"), add_bos=True, special=False)
            n_prompt = len(tokens)
            room = llm.n_ctx() - n_prompt
            if room <= 0:
                raise TaskError("context_length_exceeded",
                                f"prompt has {n_prompt} tokens; the context holds {llm.n_ctx()}")
            budget = min(limits.max_tokens, room)
            if limits.seed is not None:
                llm.set_seed(limits.seed)
            vocab = llm._model.vocab  # is_eog needs the vocab handle; no public accessor in 0.3.x
            is_eog = llama_cpp.llama_vocab_is_eog
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            stops = StopStringFilter(list(limits.stop))
            parts: list[str] = []
            n_out = 0
            ttft_ms: float | None = None
            finish = should_stop() or "length"
            stopped = finish != "length"
            stop_hit = False
            gen = llm.generate(tokens, top_k=0, top_p=limits.top_p, min_p=0.0, typical_p=1.0,
                               temp=limits.temperature, repeat_penalty=1.0)
            try:
                while not stopped:
                    token = next(gen)
                    if is_eog(vocab, token):
                        finish = "stop"
                        break
                    n_out += 1
                    if ttft_ms is None:
                        ttft_ms = (time.perf_counter() - t0) * 1000.0
                    text, hit = stops.feed(decoder.decode(llm.detokenize([token])))
                    if text:
                        parts.append(text)
                        on_delta(text)
                    if hit:
                        finish, stop_hit = "stop", True
                        break
                    if n_out >= budget:
                        finish = "length"
                        break
                    reason = should_stop()
                    if reason:
                        finish = reason
                        break
            finally:
                gen.close()
            if not stop_hit:  # flush held-back text and any incomplete UTF-8 sequence
                tail, _ = stops.feed(decoder.decode(b"", final=True))
                tail += stops.flush()
                if tail:
                    parts.append(tail)
                    on_delta(tail)
            return Generation(
                text="".join(parts),
                finish_reason=finish,
                prompt_tokens=n_prompt,
                completion_tokens=n_out,
                ttft_ms=ttft_ms,
                duration_ms=(time.perf_counter() - t0) * 1000.0,
            )
        finally:
            self._release(pool, llm)

    def embed(self, model: str, texts: list[str]) -> Embeddings:
        m = self._model(model)
        if "embedding" not in m.kinds:
            raise TaskError("unsupported_kind", f"model {m.name} does not produce embeddings")
        t0 = time.perf_counter()
        pool = self._pool(m, embedding=True)
        llm = self._acquire(pool)
        try:
            vectors, count = llm.embed(texts, normalize=True, truncate=True, return_count=True)
        finally:
            self._release(pool, llm)
        return Embeddings(vectors=[[float(x) for x in v] for v in vectors], prompt_tokens=int(count),
                          duration_ms=(time.perf_counter() - t0) * 1000.0)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            with pool.cond:
                pool.closed = True
                idle, pool.idle = pool.idle, []
            for llm in idle:
                llm.close()
