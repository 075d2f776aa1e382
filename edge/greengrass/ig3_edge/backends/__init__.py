"""Inference backends behind one interface (``ig3_edge.backends.base.Backend``).

- ``llama_cpp``: llama.cpp in-process (llama-cpp-python), the default on the M1.
- ``openai_server``: a local OpenAI-compatible server (llama-server, Ollama, vLLM) over HTTP.
An ONNX backend would be a third module implementing the same Protocol.
"""
