# The llm function: an ASGI app served by uvicorn, run on Lambda by AWS Lambda Web Adapter in
# response_stream mode (the managed Python runtime cannot stream responses). The same image runs
# unchanged on ECS Fargate or locally (`docker run -p 8080:8080`), where the adapter is inert.
# Built by `cdk deploy` (asset publishing), never at synth. The build context is prepared by
# infra/cdk (ig3_cdk.constructs.functions): requirements.txt pinned with hashes, ig3/, ig3_functions/.
FROM public.ecr.aws/awsguru/aws-lambda-adapter:0.9.1 AS adapter

FROM public.ecr.aws/docker/library/python:3.11-slim-bookworm
COPY --from=adapter /lambda-adapter /opt/extensions/lambda-adapter

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    AWS_LWA_INVOKE_MODE=response_stream \
    AWS_LWA_READINESS_CHECK_PATH=/

WORKDIR /var/task
COPY requirements.txt .
# Exact pins with hashes: a tampered or substituted wheel fails the build (litellm had malicious releases).
RUN pip install --no-deps --require-hashes --only-binary=:all: -r requirements.txt \
    && (python -m compileall -q -j 0 /usr/local/lib/python3.11/site-packages || true)
COPY ig3 ./ig3
COPY ig3_functions ./ig3_functions
RUN python -m compileall -q ig3 ig3_functions

ARG ASGI_APP
ARG PORT=8080
ENV IG3_ASGI_APP=${ASGI_APP} PORT=${PORT} AWS_LWA_PORT=${PORT} PYTHONPATH=/var/task
RUN useradd --uid 10001 --no-create-home ig3
USER 10001
EXPOSE ${PORT}
# One worker: Lambda gives one request per environment; on Fargate scale by tasks.
CMD ["sh", "-c", "exec uvicorn \"$IG3_ASGI_APP\" --host 0.0.0.0 --port \"$PORT\" --no-access-log --timeout-keep-alive 75"]
