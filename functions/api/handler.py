"""api function: devices, tasks, auth, keys, billing routes (Powertools REST resolver)."""
from aws_lambda_powertools.logging import correlation_paths

from ig3.api import auth_routes, billing_routes, devices_routes, keys_routes, registration_routes, tasks_routes
from ig3.api.app import build_resolver
from ig3.observability import logger, metrics, tracer

# One router per capability; each module's heavy imports are lazy inside its routes.
app = build_resolver([tasks_routes.router, devices_routes.router, registration_routes.router, auth_routes.router,
                     keys_routes.router, billing_routes.router])


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return app.resolve(event, context)
