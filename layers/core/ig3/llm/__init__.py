"""The LLM Gateway: an OpenAI-compatible API over the iG3 edge network and cloud providers.

Modules (each states its own design decisions):
- ``asgi``        the raw ASGI app (``ig3_functions.llm.app:app``), lifespan, gc.freeze().
- ``gateway``     the request pipeline: auth -> parse -> route -> admit -> serve; relay policies.
- ``routing``     edge-vs-cloud policy (pure): aliases, complexity, urgency/SLO, live capacity.
- ``admission``   rpm/tpm sliding windows + the response cache in one Redis Lua call.
- ``redisguard``  Redis degrade policy: short timeouts, circuit breaker, write-behind batches.
- ``resp``        the lean pipelined Redis client of the hot path.
- ``cloud``       pooled aiohttp client for OpenAI-compatible upstreams; LiteLLM (lazy) for others.
- ``edge``        the EdgeBackend port, its TaskService adapter and the shared MQTT stream hub.
- ``usage``       UsageRecorded events, batched off the request path.
- ``config``      LiteLLM ``model_list`` config + ``ig3.aliases``.
- ``models`` / ``openai_shapes``  OpenAI request models and response/SSE shapes.
- ``wiring``      builds it all from the environment.

Nothing here imports litellm, boto3 or the X-Ray SDK at import time (cold start budget 600 ms).
"""
