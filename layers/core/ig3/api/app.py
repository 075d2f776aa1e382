"""The api function's resolver: routers per capability, domain errors mapped to HTTP here only."""
from __future__ import annotations

import orjson
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError

from ig3.errors import DomainError, MethodNotAllowed, NotFound, error_body
from ig3.observability import logger


def _error_response(exc: DomainError) -> Response:
    return Response(status_code=exc.status, content_type=content_types.APPLICATION_JSON,
                    body=orjson.dumps(exc.body()).decode(), headers=exc.headers)


def build_resolver(routers: list) -> APIGatewayRestResolver:
    resolver = APIGatewayRestResolver(strip_prefixes=[])

    @resolver.exception_handler(DomainError)
    def _domain(exc: DomainError) -> Response:
        if exc.status >= 500:
            logger.error("request failed", extra={"code": exc.code})
        return _error_response(exc)

    @resolver.not_found
    def _not_found(_: NotFoundError) -> Response:
        event = resolver.current_event
        return _error_response(NotFound(f"no route for {event.http_method} {event.path}", code="unknown_route"))

    @resolver.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Unknown failures: log the type, not the payload (which may carry prompts or secrets).
        logger.exception("unhandled error", extra={"error_type": type(exc).__name__})
        return Response(status_code=500, content_type=content_types.APPLICATION_JSON,
                        body=orjson.dumps(error_body(500, "internal_error", "internal error", "internal_error")).decode())

    for router in routers:
        resolver.include_router(router)
    return resolver


__all__ = ["build_resolver", "MethodNotAllowed"]
