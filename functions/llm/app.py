"""llm function: the OpenAI-compatible ASGI app (``ig3_functions.llm.app:app``).

Run by uvicorn — in AWS inside the container image behind Lambda Web Adapter
(``AWS_LWA_INVOKE_MODE=response_stream``), locally as is. See README.md for the environment.
"""
from ig3.llm.asgi import LlmApp
from ig3.llm.wiring import build_from_env

app = LlmApp(build_from_env)
