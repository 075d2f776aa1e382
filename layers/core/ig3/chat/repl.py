"""The interactive loop of ``ig3 chat``.

Tokens are written to stdout as they arrive (plain writes + flush: a rich live region would
redraw the whole answer per token). After each answer one dim line says where it ran (edge
device or cloud, from the ``x-ig3-route*`` headers) and how fast (tokens/s from the usage the
stream ends with). Slash commands: ``/model [name]``, ``/models``, ``/clear``, ``/exit``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from ig3.chat.client import GatewayClient, GatewayError
from ig3.chat.conversation import Conversation, InputCollector


# Model output is untrusted text: control characters (ESC sequences, \r, \b) could rewrite the
# screen or the terminal's state. Keep newlines and tabs; show the rest as visible escapes.
_CONTROL = {c: f"\\x{c:02x}" for c in range(32) if c not in (9, 10)} | {127: "\\x7f"}


def terminal_safe(text: str) -> str:
    return text.translate(_CONTROL)


HELP = ('Enter sends. End a line with \\ to continue it; a line of """ opens and closes a block. '
        "/model [name], /models, /clear, /exit.")


def pick_model(client: GatewayClient, wanted: str | None) -> str:
    names = client.models()
    if wanted:
        return wanted
    return "ig3/auto" if "ig3/auto" in names or not names else names[0]


def run(url: str, *, api_key: str | None, wallet_key: Path | None, model: str | None, system: str | None,
        max_tokens: int | None, history: int, stdin=None, stdout=None) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    console = Console(file=stdout, highlight=False, soft_wrap=True)
    client = GatewayClient(url, api_key)
    try:
        if wallet_key is not None:
            client.login_with_wallet(wallet_key)
            console.print("[dim]signed in with the wallet key (SIWE)[/dim]")
        model = pick_model(client, model)
    except GatewayError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    except OSError as exc:
        console.print(f"[red]cannot reach {url}: {exc}[/red]")
        return 2
    convo = Conversation(max_messages=history, system=system)
    collector = InputCollector()
    console.print(f"[bold]ig3 chat[/bold] · {url} · model [cyan]{model}[/cyan]\n[dim]{HELP}[/dim]")
    while True:
        stdout.write("... " if collector.continuing else "you> ")
        stdout.flush()
        line = stdin.readline()
        if not line:
            stdout.write("\n")
            return 0
        text = collector.feed(line.rstrip("\n"))
        if text is None:
            continue
        text = text.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, arg = text.partition(" ")
            if cmd in ("/exit", "/quit"):
                return 0
            if cmd == "/clear":
                convo.clear()
                console.print("[dim]history cleared[/dim]")
            elif cmd == "/models":
                try:
                    console.print(", ".join(client.models()))
                except GatewayError as exc:
                    console.print(f"[red]{exc}[/red]")
            elif cmd == "/model":
                if arg.strip():
                    model = arg.strip()
                console.print(f"model [cyan]{model}[/cyan]")
            else:
                console.print(f"[dim]{HELP}[/dim]")
            continue
        stdout.write("ai> ")
        stdout.flush()

        def write(delta: str) -> None:
            stdout.write(terminal_safe(delta))
            stdout.flush()

        try:
            result = client.stream_chat(convo.messages_with(text), model, max_tokens=max_tokens, on_delta=write)
        except GatewayError as exc:
            stdout.write("\n")
            console.print(f"[red]{_explain(exc)}[/red]")
            continue
        except OSError as exc:
            stdout.write("\n")
            console.print(f"[red]connection failed: {exc}[/red]")
            continue
        stdout.write("\n")
        convo.record(text, result.text)
        console.print(f"[dim]route: {result.route.describe()} · {result.stats.describe()}[/dim]")


def _explain(exc: GatewayError) -> str:
    if exc.status == 402:
        return f"no balance left: top up the wallet ({exc.message})"
    if exc.status in (429, 503):
        return f"no capacity right now, try again shortly ({exc.code}: {exc.message})"
    if exc.status == 401:
        return f"not signed in: set IG3_API_KEY, or pass --api-key or --wallet-key ({exc.message})"
    return str(exc)
