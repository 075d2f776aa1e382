"""AI Gateway work: ``POST /v1/tasks``, ``GET /v1/tasks/{id}``."""
from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from ig3.api.http import current_principal, json_response, parse_body
from ig3.errors import BadRequest
from ig3.tasks.model import TaskSpec

router = APIGatewayRouter()
MAX_WAIT_S = 25.0  # below API Gateway's 29 s integration timeout


def _service():
    from ig3.tasks.wiring import task_service

    return task_service()


def _wait_param() -> float:
    raw = router.current_event.get_query_string_value("wait", default_value=None)
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise BadRequest("wait must be a number of seconds", code="invalid_parameter") from None
    if not 0 <= wait <= MAX_WAIT_S:
        raise BadRequest(f"wait must be between 0 and {MAX_WAIT_S:.0f} seconds", code="invalid_parameter")
    return wait


@router.post("/v1/tasks")
def submit_task():
    principal = current_principal(router)
    spec = parse_body(router, TaskSpec)
    wait = _wait_param()
    key = router.current_event.get_header_value("idempotency-key", case_sensitive=False)
    if key is not None and not 1 <= len(key) <= 128:
        raise BadRequest("Idempotency-Key must be 1-128 characters", code="invalid_header")
    task = _service().submit(spec, account=principal.subject, idempotency_key=key, key_id=principal.key_id,
                             key_budget=getattr(principal, "budget", None))
    if wait > 0 and not task.terminal:
        from ig3.redis_client import get_blocking_redis
        from ig3.tasks.notify import wait_terminal

        task = wait_terminal(get_blocking_redis(), task.task_id, wait) or _service().get(task.task_id)
    return json_response(200 if task.terminal else 202, task.public_view(),
                         headers={"location": f"/v1/tasks/{task.task_id}"})


@router.get("/v1/tasks/<task_id>")
def get_task(task_id: str):
    principal = current_principal(router)
    wait = _wait_param()
    task = _service().get(task_id, account=principal.subject)
    if wait > 0 and not task.terminal:
        from ig3.redis_client import get_blocking_redis
        from ig3.tasks.notify import wait_terminal

        task = wait_terminal(get_blocking_redis(), task_id, wait) or _service().get(task_id, account=principal.subject)
    return json_response(200, task.public_view())
