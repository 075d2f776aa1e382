"""rag function: the ``/v1/collections`` routes (Powertools REST resolver).

Its own function, not the api function, because its dependencies are heavy: numpy + faiss-cpu
+ qdrant-client/grpcio are ~145 MB unzipped, which next to the api function's identity stack
would leave the 250 MB zip limit almost no room, and would slow every api cold start's code
download for routes most calls never touch.
"""

from aws_lambda_powertools.logging import correlation_paths

from ig3.api import rag_routes
from ig3.api.app import build_resolver
from ig3.observability import logger, metrics, tracer

app = build_resolver([rag_routes.router])


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return app.resolve(event, context)
