"""A stand-in for a Qdrant server's REST API, for testing ``QdrantRestStore`` without a server.

**This is not Qdrant.** There is no Qdrant server binary on PyPI and no Docker on this machine, so
the most faithful stand-in available is built from qdrant-client itself:

- every request body is parsed with ``qdrant_client.http.models`` — the pydantic models that
  qdrant-client generates from Qdrant's OpenAPI document, i.e. Qdrant's own REST schema
  (``extra="forbid"``, strict types): whatever they reject is answered 400 as Qdrant would;
- the parsed request is executed by qdrant-client's embedded local mode (``QdrantClient(":memory:")``),
  the same engine the local cloud and the ``QdrantStore`` tests use;
- answers use Qdrant's envelope, ``{"result": ..., "status": "ok", "time": s}``, results serialised
  from the same models; errors as Qdrant sends them, ``{"status": {"error": "..."}, "time": s}``
  with Qdrant's status codes (400 format error / wrong input, 401 missing or wrong API key, 404
  missing collection, 409 collection exists).

Only the routes and fields the adapter uses are served; anything else (another route, a query
parameter or request field the stand-in does not implement) is answered 404 / 400 rather than
silently ignored, so the adapter cannot come to depend on something only the stand-in accepts.
What it cannot prove: behaviour specific to the real server (HNSW approximation, its exact error
wording, status codes of failures outside this list) — those are Qdrant's documented API.
HTTP/1.1 keep-alive like Qdrant's actix server; ``drop_after_response`` closes a connection after
its next answer without saying so (an idle connection the server dropped), for the reconnect test.
"""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from pydantic import TypeAdapter, ValidationError
from qdrant_client import QdrantClient
from qdrant_client.http import models as qm

_COLLECTION = re.compile(r"^/collections/([^/]+)(/.*)?$")
_POINT_INSERT = TypeAdapter(qm.PointInsertOperations)
_POINTS_SELECTOR = TypeAdapter(qm.PointsSelector)
# QueryRequest fields the stand-in executes (others: 400, not silently ignored)
_QUERY_FIELDS = {"query", "filter", "score_threshold", "limit", "with_payload"}


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class QdrantStandIn:
    def __init__(self, api_key: str | None = None):
        self.api_key = api_key
        self.local = QdrantClient(location=":memory:")
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.connections = 0
        self.drop_after_response = False
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                standin.connections += 1
                super().setup()

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                started = time.perf_counter()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                standin.requests.append((self.command, self.path))
                try:
                    if standin.api_key is not None and self.headers.get("api-key") != standin.api_key:
                        raise HttpError(401, "Must provide an API key or an Authorization bearer token")
                    result = standin.dispatch(self.command, self.path, raw)
                    status, body = 200, {"result": result, "status": "ok"}
                except HttpError as exc:
                    status, body = exc.status, {"status": {"error": exc.message}}
                body["time"] = time.perf_counter() - started
                data = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if standin.drop_after_response:
                    standin.drop_after_response = False
                    self.close_connection = True  # no "Connection: close": the client learns on reuse

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> QdrantStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.local.close()

    # -- routes --------------------------------------------------------------------------------------
    @staticmethod
    def _body(raw: bytes) -> Any:
        try:
            return orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, f"Format error in JSON body: {exc}") from None

    @staticmethod
    def _parse(model: Any, data: Any) -> Any:
        try:
            if isinstance(model, TypeAdapter):
                return model.validate_python(data)
            return model.model_validate(data)
        except ValidationError as exc:
            raise HttpError(400, f"Format error in JSON body: {exc}") from None

    def _missing(self, name: str) -> HttpError:
        return HttpError(404, f"Not found: Collection `{name}` doesn't exist!")

    def dispatch(self, method: str, target: str, raw: bytes) -> Any:
        parts = urlsplit(target)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = set(params) - {"wait"}
        if unknown:
            raise HttpError(400, f"stand-in: unsupported query parameters {sorted(unknown)}")
        if params.get("wait", "true") not in ("true", "false"):
            raise HttpError(400, "Query deserialize error: wait: invalid boolean")
        m = _COLLECTION.match(parts.path)
        if not m:
            raise HttpError(404, f"stand-in: no route {method} {parts.path}")
        name, tail = unquote(m.group(1)), m.group(2) or ""
        body = self._body(raw)
        with self.lock:
            return self._route(method, name, tail, body)

    def _route(self, method: str, name: str, tail: str, body: Any) -> Any:
        local = self.local
        exists = local.collection_exists(name)
        if (method, tail) == ("GET", "/exists"):
            return qm.CollectionExistence(exists=exists).model_dump(mode="json")
        if (method, tail) == ("PUT", ""):
            req = self._parse(qm.CreateCollection, body if body is not None else {})
            if req.model_fields_set - {"vectors"}:
                raise HttpError(400, f"stand-in: unsupported fields {sorted(req.model_fields_set)}")
            if exists:
                raise HttpError(409, f"Wrong input: Collection `{name}` already exists!")
            return local.create_collection(name, vectors_config=req.vectors)
        if (method, tail) == ("DELETE", ""):
            return local.delete_collection(name)
        if (method, tail) == ("GET", ""):
            if not exists:
                raise self._missing(name)
            return local.get_collection(name).model_dump(mode="json")
        if not exists:
            raise self._missing(name)
        try:
            if (method, tail) == ("PUT", "/points"):
                ops = self._parse(_POINT_INSERT, body)
                if not isinstance(ops, qm.PointsList) or ops.model_fields_set - {"points"}:
                    raise HttpError(400, "stand-in: only {\"points\": [...]} upserts are served")
                self._check_dimensions(name, [p.vector for p in ops.points])
                return local.upsert(name, points=ops.points, wait=True).model_dump(mode="json")
            if (method, tail) == ("POST", "/points/delete"):
                sel = self._parse(_POINTS_SELECTOR, body)
                return local.delete(name, points_selector=sel, wait=True).model_dump(mode="json")
            if (method, tail) == ("POST", "/points/count"):
                req = self._parse(qm.CountRequest, body if body is not None else {})
                if req.model_fields_set - {"filter", "exact"}:
                    raise HttpError(400, f"stand-in: unsupported fields {sorted(req.model_fields_set)}")
                exact = True if req.exact is None else req.exact
                return local.count(name, count_filter=req.filter, exact=exact).model_dump(mode="json")
            if (method, tail) == ("POST", "/points/query"):
                req = self._parse(qm.QueryRequest, body if body is not None else {})
                if req.model_fields_set - _QUERY_FIELDS:
                    extra = sorted(req.model_fields_set - _QUERY_FIELDS)
                    raise HttpError(400, f"stand-in: unsupported fields {extra}")
                if not isinstance(req.query, list):
                    raise HttpError(400, "stand-in: only nearest queries by a dense vector are served")
                self._check_dimensions(name, [req.query])
                res = local.query_points(
                    name, query=req.query, limit=req.limit if req.limit is not None else 10,
                    score_threshold=req.score_threshold, query_filter=req.filter,
                    with_payload=req.with_payload if req.with_payload is not None else False,
                )
                return res.model_dump(mode="json")
        except ValueError as exc:  # local mode's own input checks
            raise HttpError(400, f"Wrong input: {exc}") from None
        raise HttpError(404, f"stand-in: no route {method} /collections/{{name}}{tail}")

    def _check_dimensions(self, name: str, vectors: list[Any]) -> None:
        """Qdrant refuses a vector of the wrong size (local mode would broadcast or fail oddly)."""
        size = self.local.get_collection(name).config.params.vectors.size
        for v in vectors:
            if not isinstance(v, list) or len(v) != size:
                got = len(v) if isinstance(v, list) else type(v).__name__
                raise HttpError(400, f"Wrong input: Vector dimension error: expected dim: {size}, got {got}")
