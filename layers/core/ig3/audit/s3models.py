"""The models bucket: reference GGUF files by sha256 (``ModelSource`` for ``ig3.audit.models``) and the
operator's publish step (``ig3 models publish``).

Layout: one object per file at ``<prefix><sha256>.gguf`` (prefix ``models/`` by default). The key is
the content's hash, so an object never changes; the model's metadata rides on the object itself as S3
user metadata (``x-amz-meta-sha256``, ``-name``, ``-ctx``, ``-quant``, ``-size``): one PUT makes file and
metadata appear together, and a HEAD is all the auditor needs to know a model before fetching it. The
bucket is versioned (an accidental overwrite or delete is recoverable); the auditor trusts no metadata
for integrity: it hashes what it downloads (``CachedModelStore``).

The audit function's role may only read ``<prefix>*`` (``s3:GetObject``, which also authorizes HEAD) and
list the bucket (so a missing model answers 404, not 403).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from ig3.audit.models import CHUNK_BYTES, MODELS_PREFIX, ModelMeta, file_sha256, is_sha256

_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3ModelSource:
    def __init__(self, bucket: str, prefix: str = MODELS_PREFIX, *, client: Any | None = None):
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket, self.prefix = bucket, prefix
        if client is None:
            from ig3.aws import client as aws_client

            client = aws_client("s3")
        self.s3 = client

    def key(self, sha256: str) -> str:
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return f"{self.prefix}{sha256}.gguf"

    def head(self, sha256: str) -> ModelMeta | None:
        try:
            r = self.s3.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _MISSING:
                return None
            raise
        return ModelMeta.from_metadata(sha256, r["ContentLength"], r.get("Metadata") or {})

    def chunks(self, sha256: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        body = self.s3.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
        try:
            yield from body.iter_chunks(chunk_bytes)
        finally:
            body.close()


@dataclass(frozen=True)
class Published:
    meta: ModelMeta
    bucket: str
    key: str
    action: str  # uploaded | unchanged | metadata-updated


def describe_gguf(path: str | Path, *, name: str | None = None) -> ModelMeta:
    """sha256 + name/ctx/quant of a GGUF file (its header parsed by the edge agent's own reader)."""
    from ig3_edge.models import read_gguf

    path = Path(path)
    sha = file_sha256(path)
    info = read_gguf(path, sha256=sha)  # validates the GGUF header; hashed once, above
    return ModelMeta(sha256=sha, size=path.stat().st_size, name=name or info.name, ctx=info.ctx,
                     quant=info.quant)


def publish(path: str | Path, *, bucket: str, prefix: str = MODELS_PREFIX, name: str | None = None,
            client: Any | None = None) -> Published:
    """Upload one reference model under its sha256 with its metadata. Idempotent: an object already there
    with the same size and metadata is left alone; the same file under a new name only gets its metadata
    replaced (a server-side copy onto itself, no re-upload)."""
    src = S3ModelSource(bucket, prefix, client=client)
    meta = describe_gguf(path, name=name)
    key = src.key(meta.sha256)
    existing = src.head(meta.sha256)
    if existing is not None and existing.size == meta.size:
        if existing == meta:
            return Published(meta, bucket, key, "unchanged")
        src.s3.copy({"Bucket": bucket, "Key": key}, bucket, key,
                    ExtraArgs={"Metadata": meta.as_metadata(), "MetadataDirective": "REPLACE",
                               "ContentType": "application/octet-stream"})
        return Published(meta, bucket, key, "metadata-updated")
    # A managed (multipart above 8 MiB) upload; botocore checksums every part in transit.
    src.s3.upload_file(str(path), bucket, key,
                       ExtraArgs={"Metadata": meta.as_metadata(), "ContentType": "application/octet-stream"})
    after = src.head(meta.sha256)
    if after is None or after.size != meta.size:
        raise RuntimeError(f"s3://{bucket}/{key}: upload did not land ({after})")
    return Published(meta, bucket, key, "uploaded")
