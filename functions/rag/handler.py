"""rag function: the ``/v1/collections`` routes (Powertools REST resolver).

Its own function, not the api function, because its one heavy dependency is: numpy with its
OpenBLAS (38 MB unzipped; the vector stores in Lambda are numpy's exact flat index over the Faiss
S3 format and Qdrant over REST, neither faiss nor qdrant-client: ``ig3.rag.stores``). In the api
function it would slow every api cold start's code download for routes most calls never touch.
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
