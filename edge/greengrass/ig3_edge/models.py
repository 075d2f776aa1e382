"""Model discovery: the GGUF files in the models directory, their metadata, hot add/remove.

Design decisions:
- The routable name (``routable_name``): a hub-style release file ``<Model>.<QUANT>.gguf`` is named
  by its file (``smollm2-135m-instruct``); otherwise the GGUF ``general.name`` lowercased with
  spaces -> ``-``; the file stem when the file has neither.
  Two files with one name: the first by file name wins, the other is reported in the log.
- Metadata (architecture, parameter count, context length, quantization, chat template,
  pooling) is read from the GGUF header through a memory map (format constants from the
  ``gguf`` package; see ``_HeaderReader`` for why not its full reader): no weights are loaded. The sha256 of the file (what the cloud routes ``model_hash`` by)
  is computed once per (size, mtime) and cached.
- Kinds: ``completion`` for decoder architectures, ``chat`` when the file carries a chat
  template, ``embedding`` when it declares a pooling type or is an encoder architecture.
- ``scan()`` is idempotent and cheap when nothing changed (one ``stat`` per file), so it runs
  on a timer: files added or removed are picked up without a restart.
"""
from __future__ import annotations

import hashlib
import re
import logging
import math
import mmap
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ig3.wire import ModelInfo

log = logging.getLogger("ig3_edge.models")

ENCODER_ARCHS = {"bert", "nomic-bert", "jina-bert-v2", "t5encoder", "modern-bert"}


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    sha256: str
    size: int
    mtime_ns: int
    arch: str | None = None
    params: int | None = None
    ctx: int | None = None
    quant: str | None = None
    kinds: tuple[str, ...] = ("completion",)
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None

    def info(self, tokens_per_s: float | None = None) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            file=self.path.name,
            sha256=self.sha256,
            arch=self.arch,
            params=self.params,
            ctx=self.ctx,
            quant=self.quant,
            kinds=list(self.kinds),  # type: ignore[arg-type]
            tokens_per_s=round(tokens_per_s, 2) if tokens_per_s else None,
        )


_QUANT_SUFFIX = re.compile(r"[.\-_](?:i?q\d[a-z0-9_]*|f16|f32|bf16|fp16)$", re.IGNORECASE)


def routable_name(general_name: str | None, path: Path) -> str:
    """A release file named ``<Model>.<QUANT>.gguf`` (the hub convention, e.g.
    ``SmolLM2-135M-Instruct.Q4_1.gguf``) is named by its file: its ``general.name`` is often a
    training-run label (SmolLM2's reads "Smollm2 135M 8k Lc100K Mix1 Ep2"). Otherwise the GGUF
    ``general.name``, else the file stem."""
    stem = path.stem
    m = _QUANT_SUFFIX.search(stem)
    if m:
        base = stem[: m.start()]
    elif general_name and general_name.strip():
        base = general_name.strip()
    else:
        base = stem
    return "-".join(base.lower().split())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _HeaderReader:
    """Reads a GGUF header (metadata key/values and tensor infos) from a memory map.

    Why not ``gguf.GGUFReader``: it materialises every array element (a 49k-token vocabulary
    plus its merges) as numpy views, ~2 s for SmolLM2 on this machine. Discovery needs the
    scalars, two token strings and the tensor shapes; this walks the same format (the value
    type codes are the ``gguf`` package's ``GGUFValueType``) and skips arrays by length, ~50 ms.
    """

    def __init__(self, buf: Any):
        from gguf import GGUFValueType as T

        self.T = T
        self.buf = buf
        self.pos = 0
        self._scalar = {
            T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I", T.INT32: "<i",
            T.FLOAT32: "<f", T.BOOL: "<?", T.UINT64: "<Q", T.INT64: "<q", T.FLOAT64: "<d",
        }

    def _unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> bytes:
        n = self._unpack("<Q")
        value = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return value

    def value(self, vtype: int, keep_array: bool) -> Any:
        T = self.T
        if vtype == T.STRING:
            return self.string().decode("utf-8", errors="replace")
        if vtype == T.ARRAY:
            itype = self._unpack("<I")
            count = self._unpack("<Q")
            if itype == T.STRING:
                items = []
                for _ in range(count):
                    n = struct.unpack_from("<Q", self.buf, self.pos)[0]
                    if keep_array:
                        items.append(self.buf[self.pos + 8:self.pos + 8 + n])
                    self.pos += 8 + n
                return items if keep_array else None
            if itype == T.ARRAY:
                for _ in range(count):
                    self.value(T.ARRAY, False)
                return None
            self.pos += struct.calcsize(self._scalar[T(itype)]) * count
            return None
        return self._unpack(self._scalar[T(vtype)])

    def read(self) -> tuple[dict[str, Any], int]:
        """-> (metadata, parameter count)."""
        if bytes(self.buf[:4]) != b"GGUF":
            raise ValueError("not a GGUF file")
        self.pos = 4
        version = self._unpack("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors = self._unpack("<Q")
        n_kv = self._unpack("<Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string().decode("utf-8", errors="replace")
            vtype = self._unpack("<I")
            meta[key] = self.value(vtype, keep_array=key == "tokenizer.ggml.tokens")
        params = 0
        for _ in range(n_tensors):
            self.string()
            n_dims = self._unpack("<I")
            dims = struct.unpack_from(f"<{n_dims}Q", self.buf, self.pos)
            self.pos += 8 * n_dims + 4 + 8  # dims, type, offset
            params += math.prod(dims)
        return meta, params


def read_gguf(path: Path, sha256: str | None = None) -> LocalModel:
    """Read one GGUF file's metadata (memory-mapped header only; no weights loaded)."""
    from gguf import LlamaFileType

    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        meta, params = _HeaderReader(memoryview(mm)).read()
        tokens = meta.get("tokenizer.ggml.tokens") or []

        def token_text(key: str) -> str | None:
            tid = meta.get(key)
            if tid is None or not 0 <= int(tid) < len(tokens):
                return None
            return bytes(tokens[int(tid)]).decode("utf-8", errors="replace")

        bos, eos = token_text("tokenizer.ggml.bos_token_id"), token_text("tokenizer.ggml.eos_token_id")
        del tokens, meta["tokenizer.ggml.tokens"]  # release the memoryviews before the map closes

    arch = meta.get("general.architecture")
    ctx = meta.get(f"{arch}.context_length") if arch else None
    pooling = meta.get(f"{arch}.pooling_type") if arch else None
    file_type = meta.get("general.file_type")
    quant = None
    if file_type is not None:
        try:
            quant = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            quant = str(file_type)
    template = meta.get("tokenizer.chat_template")
    kinds: list[str] = []
    if arch not in ENCODER_ARCHS:
        if template:
            kinds.append("chat")
        kinds.append("completion")
    if arch in ENCODER_ARCHS or (pooling is not None and int(pooling) > 0):
        kinds.append("embedding")
    stat = path.stat()
    return LocalModel(
        name=routable_name(meta.get("general.name"), path),
        path=path,
        sha256=sha256 or file_sha256(path),
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        arch=arch,
        params=params or None,
        ctx=int(ctx) if ctx is not None else None,
        quant=quant,
        kinds=tuple(kinds),
        chat_template=template,
        bos_token=bos,
        eos_token=eos,
    )


class ModelRegistry:
    """The models in one directory, by routable name; thread-safe; rescanned on a timer."""

    def __init__(self, models_dir: Path):
        self.models_dir = Path(models_dir)
        self._lock = threading.Lock()
        self._by_name: dict[str, LocalModel] = {}
        self._by_path: dict[Path, LocalModel] = {}
        self._bad: dict[Path, tuple[int, int]] = {}  # unreadable files, by (size, mtime): not retried
        self._shadowed: dict[Path, tuple[int, int]] = {}  # same name as a served file: retried on removals

    def get(self, name: str) -> LocalModel | None:
        with self._lock:
            return self._by_name.get(name)

    def all(self) -> list[LocalModel]:
        with self._lock:
            return sorted(self._by_name.values(), key=lambda m: m.name)

    def scan(self) -> tuple[list[LocalModel], list[LocalModel]]:
        """Re-read the directory; returns (added, removed). Changed files count as both."""
        found: dict[Path, tuple[int, int]] = {}
        if self.models_dir.is_dir():
            for p in sorted(self.models_dir.glob("*.gguf")):
                try:
                    st = p.stat()
                except OSError:
                    continue  # removed while scanning
                found[p] = (st.st_size, st.st_mtime_ns)
        with self._lock:
            current = dict(self._by_path)
        removed = [m for p, m in current.items() if found.get(p) != (m.size, m.mtime_ns)]
        added: list[LocalModel] = []
        for p, sig in found.items():
            known = current.get(p)
            if known is not None and (known.size, known.mtime_ns) == sig:
                continue
            if self._bad.get(p) == sig or (self._shadowed.get(p) == sig and not removed):
                continue
            try:
                added.append(read_gguf(p))
            except Exception as exc:  # a half-copied or foreign file must not stop discovery
                self._bad[p] = sig
                log.warning("unreadable GGUF file %s: %s", p.name, exc)
        with self._lock:
            for m in removed:
                self._by_path.pop(m.path, None)
                if self._by_name.get(m.name) is m:
                    del self._by_name[m.name]
            accepted = []
            for m in added:
                if m.name in self._by_name:
                    log.warning("model name %s already served by %s; ignoring %s",
                                m.name, self._by_name[m.name].path.name, m.path.name)
                    self._shadowed[m.path] = (m.size, m.mtime_ns)
                    continue
                self._shadowed.pop(m.path, None)
                self._by_name[m.name] = m
                self._by_path[m.path] = m
                accepted.append(m)
        return accepted, removed
