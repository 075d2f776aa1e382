"""Reference model files for the cloud auditor, by sha256: the store port and its two implementations.

A task pins the sha256 of the model file it was routed for; the auditor can only vouch for that exact
file. ``ModelStore`` answers "is this hash available" and "give me a verified local file for it":

- ``LocalModelStore``: GGUF files already on disk (``IG3_AUDIT_MODELS_DIR``: ``ig3 up``, tests),
  indexed by hashing each file once at start.
- ``CachedModelStore``: files fetched on demand from a ``ModelSource`` (``ig3.audit.s3models``: the
  models bucket) into a local cache directory (Lambda's ephemeral ``/tmp``):

  - **streamed and verified while downloading**: the sha256 and the byte count are computed over the
    stream as it is written to a temporary file in the cache directory; only a match is renamed
    (``os.replace``, atomic) to ``<sha256>.gguf``. A mismatch deletes the temporary file and raises
    ``ModelIntegrityError`` (the audit job is retried, then lands in the DLQ; the handler counts it):
    bytes that are not the pinned file are never used and never cached.
  - **one download at a time per hash**: a per-hash thread lock plus an ``flock`` on
    ``.<sha256>.lock`` (processes sharing the directory); whoever waited finds the file in the cache.
  - **LRU within a byte budget**: a use sets the file's mtime (strictly increasing); before a
    download, the least recently used files are deleted until the new one fits. A file evicted while
    llama.cpp still maps it stays readable until unmapped (POSIX unlink semantics), so evicting the
    loaded model's file to make room for the next one is safe.
  - a file in the cache was verified when it was written and the directory is the function's own, so a
    hit is not re-hashed (a multi-GB model would cost seconds per cold start).

Pure: stdlib only, no AWS imports (``ModelSource`` is the port the S3 adapter implements).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ig3.errors import Unavailable

# Object keys in a models bucket: <prefix><sha256>.gguf (content-addressed: a key's bytes never change).
MODELS_PREFIX = "models/"
DEFAULT_CACHE_DIR = "/tmp/ig3-models"
CHUNK_BYTES = 2**20  # per read of the GET stream (against moto here, 8 MiB reads were slower, not faster)
_HASH = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(value: str) -> bool:
    return bool(_HASH.match(value or ""))


def file_sha256(path: str | Path, chunk: int = CHUNK_BYTES) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelMeta:
    """What a store knows about one reference file (S3: the object's size and user metadata)."""

    sha256: str
    size: int
    name: str | None = None
    ctx: int | None = None
    quant: str | None = None

    def as_metadata(self) -> dict[str, str]:
        """S3 user metadata (string values only; absent fields are left out)."""
        out = {"sha256": self.sha256, "size": str(self.size)}
        for k in ("name", "ctx", "quant"):
            v = getattr(self, k)
            if v is not None:
                out[k] = str(v)
        return out

    @classmethod
    def from_metadata(cls, sha256: str, size: int, meta: dict[str, str]) -> ModelMeta:
        ctx = meta.get("ctx")
        return cls(sha256=sha256, size=int(size), name=meta.get("name"),
                   ctx=int(ctx) if ctx and ctx.isdigit() else None, quant=meta.get("quant"))


class ModelIntegrityError(Unavailable):
    """The bytes a source returned for a hash are not that file (wrong digest or length).

    An ``Unavailable`` (the job is retried, another attempt may read a good copy) and deliberately not a
    ``ValueError`` (which the audit service reads as "this work does not fit the auditor")."""

    code = "model_integrity"


class ModelStore(Protocol):
    name: str

    def has(self, sha256: str) -> bool: ...

    def path(self, sha256: str) -> Path:
        """A local, verified file with exactly this sha256. Raises ``Unavailable`` (unknown hash, too large
        for the cache) or ``ModelIntegrityError`` (a fetched copy did not match)."""
        ...

    def hashes(self) -> list[str]: ...


class ModelSource(Protocol):
    """Where a cache fetches reference files from (``ig3.audit.s3models.S3ModelSource``)."""

    def head(self, sha256: str) -> ModelMeta | None: ...

    def chunks(self, sha256: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]: ...


# ---------------------------------------------------------------------------------------------- local
class LocalModelStore:
    """GGUF files on disk, indexed by their sha256 (hashed once, here)."""

    name = "local"

    def __init__(self, paths: Iterable[str | Path]):
        self._paths: dict[str, Path] = {}
        for p in paths:
            self._paths[file_sha256(p)] = Path(p)

    @classmethod
    def from_dir(cls, models_dir: str | Path) -> LocalModelStore:
        return cls(sorted(Path(models_dir).glob("*.gguf")))

    def has(self, sha256: str) -> bool:
        return sha256 in self._paths

    def path(self, sha256: str) -> Path:
        try:
            return self._paths[sha256]
        except KeyError:
            raise Unavailable(f"no reference copy of model {sha256[:12]}", code="no_auditor") from None

    def hashes(self) -> list[str]:
        return sorted(self._paths)


# ---------------------------------------------------------------------------------------------- cache
@dataclass
class CacheStats:
    hits: int = 0
    downloads: int = 0
    downloaded_bytes: int = 0
    rejected: int = 0
    evicted: int = 0
    download_s: float = 0.0


@dataclass
class CachedModelStore:
    """Reference files fetched from ``source`` on demand into ``cache_dir`` (see the module docstring).

    ``on_event(name, fields)`` is told ``downloaded`` / ``rejected`` / ``evicted`` (the wiring turns them
    into metrics and log lines)."""

    source: ModelSource
    cache_dir: str | Path = DEFAULT_CACHE_DIR
    max_bytes: int = 8 * 2**30
    on_event: Callable[[str, dict[str, Any]], None] | None = None
    chunk_bytes: int = CHUNK_BYTES
    name: str = "cache"
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._known: dict[str, ModelMeta] = {}  # positive HEADs (content-addressed: they never change)
        self._last_use_ns = 0

    # -- port
    def has(self, sha256: str) -> bool:
        if not is_sha256(sha256):
            return False
        return self._file(sha256).exists() or self._meta(sha256) is not None

    def hashes(self) -> list[str]:
        """The hashes in the cache now (the source may hold more)."""
        return sorted(p.stem for p in self.cache_dir.glob("*.gguf") if is_sha256(p.stem))

    def path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise Unavailable(f"not a sha256: {sha256[:80]!r}", code="no_auditor")
        final = self._file(sha256)
        with self._download_lock(sha256):
            if final.exists():
                self.stats.hits += 1
                with contextlib.suppress(FileNotFoundError):
                    self._touch(final)  # most recently used
                return final
            meta = self._meta(sha256)
            if meta is None:
                raise Unavailable(f"no reference copy of model {sha256[:12]} in the store", code="no_auditor")
            if meta.size > self.max_bytes:
                raise Unavailable(f"model {sha256[:12]} ({meta.size} B) is larger than the model cache "
                                  f"({self.max_bytes} B)", code="model_too_large")
            for stale in self.cache_dir.glob(f".{sha256}.*.part"):  # a download cut short (a timeout)
                stale.unlink(missing_ok=True)
            self._evict(meta.size, keep=sha256)
            self._download(meta, final)
            return final

    # -- internals
    def _file(self, sha256: str) -> Path:
        return self.cache_dir / f"{sha256}.gguf"

    def _meta(self, sha256: str) -> ModelMeta | None:
        meta = self._known.get(sha256)
        if meta is None:
            meta = self.source.head(sha256)
            if meta is not None:
                self._known[sha256] = meta
        return meta

    @contextlib.contextmanager
    def _download_lock(self, sha256: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(sha256, threading.Lock())
        with lock, open(self.cache_dir / f".{sha256}.lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _download(self, meta: ModelMeta, final: Path) -> None:
        tmp = self.cache_dir / f".{meta.sha256}.{os.getpid()}.{threading.get_ident()}.part"
        digest, size, t0 = hashlib.sha256(), 0, time.perf_counter()
        try:
            with open(tmp, "wb") as f:
                for chunk in self.source.chunks(meta.sha256, self.chunk_bytes):
                    digest.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                    if size > meta.size:  # never write past what the file can be
                        break
                f.flush()
                os.fsync(f.fileno())
            got = digest.hexdigest()
            if got != meta.sha256 or size != meta.size:
                self._known.pop(meta.sha256, None)  # HEAD again next time: an operator may fix the object
                self.stats.rejected += 1
                self._emit("rejected", {"sha256": meta.sha256, "got_sha256": got, "bytes": size,
                                        "expected_bytes": meta.size})
                raise ModelIntegrityError(
                    f"model {meta.sha256[:12]}: the source returned {size} B with sha256 {got[:12]} "
                    f"(expected {meta.size} B); not used, not cached")
            os.replace(tmp, final)
            self._touch(final)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise Unavailable(f"model cache {self.cache_dir} is full", code="model_cache_full") from exc
            raise
        finally:
            tmp.unlink(missing_ok=True)
        elapsed = time.perf_counter() - t0
        self.stats.downloads += 1
        self.stats.downloaded_bytes += size
        self.stats.download_s += elapsed
        self._emit("downloaded", {"sha256": meta.sha256, "model_name": meta.name, "bytes": size,
                                  "seconds": round(elapsed, 3),
                                  "mb_per_s": round(size / 2**20 / elapsed, 1) if elapsed > 0 else None})

    def _touch(self, path: Path) -> None:
        """Mark a file most recently used: its mtime, strictly increasing within this process (the kernel's
        file timestamps are coarse, a few ms: two uses in one tick would otherwise tie)."""
        with self._guard:
            ns = self._last_use_ns = max(time.time_ns(), self._last_use_ns + 1)
        os.utime(path, ns=(ns, ns))

    def _evict(self, incoming: int, *, keep: str) -> None:
        """Delete least recently used cached files until ``incoming`` more bytes fit the budget."""
        files = []
        used = 0
        for p in self.cache_dir.iterdir():
            if p.suffix not in (".gguf", ".part"):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            used += st.st_size
            if p.suffix == ".gguf" and p.stem != keep:
                files.append((st.st_mtime_ns, p, st.st_size))
        for _, p, size in sorted(files, key=lambda t: t[0]):
            if used + incoming <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            used -= size
            self.stats.evicted += 1
            self._emit("evicted", {"sha256": p.stem, "bytes": size})

    def _emit(self, name: str, fields: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(name, fields)
