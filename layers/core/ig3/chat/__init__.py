"""``ig3 chat``: a terminal chat client on the LLM gateway (``/v1/chat/completions``).

Split so the logic is testable without a terminal: ``conversation`` (pure: bounded history,
multi-line input, SSE parsing, route and speed figures), ``client`` (HTTP: urllib, streaming SSE,
SIWE login with a wallet key file), ``repl`` (the interactive loop, rich output).
"""
