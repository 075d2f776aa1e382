"""API Gateway (REST) proxy events for the api function, built the way API Gateway builds them,
and a tiny HTTP front (stdlib) that turns real HTTP requests into such events — for the client
helper, which talks HTTP."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class LambdaContext:
    function_name: str = "ig3-test-api"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:ig3-test-api"
    aws_request_id: str = ""

    def __post_init__(self) -> None:
        self.aws_request_id = self.aws_request_id or str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def apigw_event(
    method: str,
    path: str,
    body: Any = None,
    *,
    resource: str | None = None,
    path_params: dict[str, str] | None = None,
    principal: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    raw_body: str | None = None,
) -> dict[str, Any]:
    hdrs = {"Content-Type": "application/json", "Host": "gw.test", **(headers or {})}
    payload = raw_body if raw_body is not None else (json.dumps(body) if body is not None else None)
    return {
        "resource": resource or path,
        "path": path,
        "httpMethod": method,
        "headers": hdrs,
        "multiValueHeaders": {k: [v] for k, v in hdrs.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": path_params,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource or path,
            "httpMethod": method,
            "path": f"/test{path}",
            "stage": "test",
            "requestId": str(uuid.uuid4()),
            "accountId": "123456789012",
            "apiId": "local",
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "pytest"},
            "authorizer": dict(principal) if principal else None,
        },
        "body": payload,
        "isBase64Encoded": False,
    }


def call(handler: Callable, method: str, path: str, body: Any = None, **kw) -> tuple[int, dict[str, Any]]:
    response = handler(apigw_event(method, path, body, **kw), LambdaContext())
    return response["statusCode"], json.loads(response["body"]) if response.get("body") else {}


def serve_http(handler: Callable) -> tuple[str, Callable[[], None]]:
    """A loopback HTTP server that hands each request to ``handler`` as a proxy event."""

    class Front(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _proxy(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)).decode()
            event = apigw_event(
                self.command,
                self.path.split("?")[0],
                raw_body=raw or None,
                headers={k: v for k, v in self.headers.items()},
            )
            resp = handler(event, LambdaContext())
            body = (resp.get("body") or "").encode()
            self.send_response(resp["statusCode"])
            for k, v in (resp.get("headers") or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET = do_DELETE = _proxy  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Front)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}", stop
