"""iG3 edge agent: the Greengrass v2 component ``com.ig3.EdgeAgent`` that runs local models with llama.cpp.

Run it with ``python -m ig3_edge --transport mqtt|ipc|greengrass-v1 ...`` (see ``ig3_edge.config``).
It imports only the standard library, pydantic (through ``ig3.wire``), paho-mqtt or awsiotsdk
(the transport in use), llama-cpp-python, gguf, psutil and eth-account — never boto3 or litellm.
"""
__version__ = "0.1.0"
