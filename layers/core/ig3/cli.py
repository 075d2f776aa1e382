"""``ig3`` — the operator's and developer's command line.

- ``ig3 up``: run the whole network locally (prints one line ``ready <base url>`` when every part answers)
- ``ig3 devices``: the fleet, live
- ``ig3 tasks submit`` / ``ig3 tasks get``: AI Gateway work
- ``ig3 chat``: a streaming terminal chat on the LLM gateway (``ig3.chat``)
- ``ig3 models publish``: put a reference model file in the models bucket the audit function reads
"""
from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="ig3-gateway: the gateway layer of the iG3 edge network.", no_args_is_help=True)
tasks_app = typer.Typer(help="Submit and inspect AI Gateway tasks.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
models_app = typer.Typer(help="Reference model files of the cloud auditor (the models bucket).", no_args_is_help=True)
app.add_typer(models_app, name="models")
err = Console(stderr=True)
out = Console()

DEFAULT_URL = os.environ.get("IG3_URL", f"http://127.0.0.1:{os.environ.get('IG3_PORT', '8080')}")


@app.command()
def up(
    port: int = typer.Option(int(os.environ.get("IG3_PORT", "8080")), help="API port (IG3_PORT)."),
    devices: int = typer.Option(int(os.environ.get("IG3_DEVICES", "3")), help="Simulated edge devices (IG3_DEVICES)."),
    tiny_models: bool = typer.Option(os.environ.get("IG3_TINY_MODELS") == "1",
                                     help="Serve tiny generated models instead of SmolLM2 (fast start, nonsense text)."),
    redis_url: Optional[str] = typer.Option(os.environ.get("REDIS_URL"), help="Use this Redis (default: embedded)."),
    mqtt_url: Optional[str] = typer.Option(os.environ.get("MQTT_URL"), help="Use this MQTT broker (default: embedded)."),
    state_dir: Optional[Path] = typer.Option(None, help="Where keys, logs and models go (default: a temp dir)."),
    cheat: list[str] = typer.Option([], help="Make simulated device INDEX dishonest: INDEX=MODE, MODE one of "
                                            "garbage | forged (ig3.local.cheaters); repeatable. Audits and "
                                            "signature checks should quarantine it (GET /v1/audit/quarantine)."),
) -> None:
    """Run the whole network locally: moto, Redis, MQTT, functions, API front and a simulated fleet."""
    from ig3.local.cheaters import MODES
    from ig3.local.cloud import LocalCloud, LocalCloudConfig, StartupError, terminate_on_sigterm

    cheaters: dict[int, str] = {}
    for spec in cheat:
        index, _, mode = spec.partition("=")
        if not index.isdigit() or int(index) >= devices or mode not in MODES:
            err.print(f"[red]error:[/red] --cheat {spec!r}: expected INDEX=MODE with 0 <= INDEX < {devices} "
                      f"and MODE one of {', '.join(MODES)}")
            raise typer.Exit(2)
        cheaters[int(index)] = mode
    terminate_on_sigterm()
    cfg = LocalCloudConfig(port=port, devices=devices, redis_url=redis_url, mqtt_url=mqtt_url,
                           tiny_models=tiny_models, state_dir=state_dir, cheaters=cheaters)
    cloud = LocalCloud(cfg)
    try:
        with err.status("starting the local cloud") as status:
            cloud.start(progress=lambda msg: (status.update(f"starting: {msg}"), err.log(f"[dim]{msg}[/dim]")))
    except StartupError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("interrupted while starting; stopped")
        raise typer.Exit(0) from None
    except Exception as exc:  # noqa: BLE001
        err.print(f"[red]error:[/red] the local cloud failed to start: {exc}")
        raise typer.Exit(1) from None
    try:
        extra = f" api_key={cloud.dev_api_key}" if getattr(cloud, "dev_api_key", None) else ""
        print(f"ready {cloud.base_url}{extra}", flush=True)
        err.print(f"[green]ig3 local cloud[/green] at {cloud.base_url} — {devices} devices; "
                  f"dashboard {cloud.base_url}/dashboard/ . Ctrl-C to stop.")
        cloud.serve_forever()
    except KeyboardInterrupt:
        cloud.stop()
    err.print("stopped")


@app.command()
def chat(
    url: str = typer.Option(DEFAULT_URL, help="Gateway base URL (IG3_URL)."),
    model: Optional[str] = typer.Option(None, help="Model (default: ig3/auto, or the first /v1/models lists)."),
    api_key: Optional[str] = typer.Option(None, envvar="IG3_API_KEY", help="API key (IG3_API_KEY)."),
    wallet_key: Optional[Path] = typer.Option(None, help="File with a wallet's hex private key: sign in by SIWE."),
    system: Optional[str] = typer.Option(None, help="System prompt."),
    max_tokens: Optional[int] = typer.Option(None, help="Cap on each answer's tokens."),
    history: int = typer.Option(20, help="Messages of history kept and sent (bounded)."),
) -> None:
    """Chat with the network's models: streamed answers, route and tokens/s per answer."""
    from ig3.chat.repl import run

    raise typer.Exit(run(url, api_key=api_key, wallet_key=wallet_key, model=model, system=system,
                         max_tokens=max_tokens, history=history))


def _request(method: str, url: str, body: Any | None = None, token: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    token = token or os.environ.get("IG3_API_KEY")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except urllib.error.URLError as exc:
        err.print(f"[red]error:[/red] cannot reach {url}: {exc.reason}")
        raise typer.Exit(2) from None


def _fail_on_error(status: int, body: Any) -> None:
    if status >= 400:
        e = (body or {}).get("error", {})
        err.print(f"[red]{status} {e.get('code', 'error')}:[/red] {e.get('message', body)}")
        raise typer.Exit(1)


@app.command()
def devices(url: str = typer.Option(DEFAULT_URL, help="Gateway base URL (IG3_URL)."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List registered devices with their live state."""
    status, body = _request("GET", f"{url}/v1/devices")
    _fail_on_error(status, body)
    if as_json:
        out.print_json(data=body)
        return
    table = Table(title="devices")
    for col in ("device", "region", "status", "load", "models", "tok/s"):
        table.add_column(col)
    for d in body.get("devices", []):
        live = d.get("live") or {}
        models = ", ".join(sorted({m.get("name", "?") for m in live.get("models", [])})) if live else ""
        load = f"{live.get('in_flight', 0)}/{live.get('capacity', 0)}" if live else "-"
        tps = live.get("tokens_per_s")
        table.add_row(d.get("device_id", "?"), d.get("region") or live.get("region") or "",
                      "online" if live else "offline", load, models, f"{tps:.0f}" if tps else "")
    out.print(table)


@tasks_app.command("submit")
def tasks_submit(
    prompt: str = typer.Argument(..., help="The user message (chat) or the prompt (completion)."),
    model: str = typer.Option("smollm2-135m-instruct", help="Model name as the network knows it."),
    kind: str = typer.Option("chat", help="chat | completion"),
    max_tokens: int = typer.Option(64),
    wait: float = typer.Option(25.0, help="Seconds to wait for the result (0: return at once)."),
    url: str = typer.Option(DEFAULT_URL, help="Gateway base URL (IG3_URL)."),
) -> None:
    """Submit a task and (by default) wait for its result."""
    body: dict[str, Any] = {"kind": kind, "model": model, "limits": {"max_tokens": max_tokens}}
    body["input"] = {"messages": [{"role": "user", "content": prompt}]} if kind == "chat" else {"prompt": prompt}
    with err.status("submitting"):
        status, task = _request("POST", f"{url}/v1/tasks" + (f"?wait={wait:g}" if wait else ""), body)
    _fail_on_error(status, task)
    _show_task(task)


@tasks_app.command("get")
def tasks_get(task_id: str, wait: float = typer.Option(0.0), url: str = typer.Option(DEFAULT_URL)) -> None:
    """Show a task."""
    status, task = _request("GET", f"{url}/v1/tasks/{task_id}" + (f"?wait={wait:g}" if wait else ""))
    _fail_on_error(status, task)
    _show_task(task)


@models_app.command("publish")
def models_publish(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="A GGUF model file."),
    name: Optional[str] = typer.Option(None, help="Model name (default: the GGUF's general.name, as devices "
                                                  "report it)."),
    bucket: Optional[str] = typer.Option(os.environ.get("IG3_AUDIT_MODELS_BUCKET"),
                                         help="The models bucket (IG3_AUDIT_MODELS_BUCKET; the stateful stack's "
                                              "ig3-<stage>-models-<account>-<region>)."),
    prefix: str = typer.Option(os.environ.get("IG3_AUDIT_MODELS_PREFIX") or "models/", help="Key prefix."),
    endpoint_url: Optional[str] = typer.Option(None, help="S3 endpoint (default: boto3's, AWS_ENDPOINT_URL)."),
) -> None:
    """Publish a reference model for audits: sha256 computed here, uploaded under it with name/ctx/quant.

    Idempotent: publishing the same file again changes nothing (a new --name replaces only the metadata).
    Audits of tasks pinning this hash can then run in AWS."""
    import boto3

    from ig3.audit.s3models import publish

    if not bucket:
        err.print("[red]error:[/red] --bucket (or IG3_AUDIT_MODELS_BUCKET) is required")
        raise typer.Exit(2)
    client = boto3.client("s3", endpoint_url=endpoint_url) if endpoint_url else boto3.client("s3")
    with err.status(f"hashing and publishing {path.name}"):
        try:
            done = publish(path, bucket=bucket, prefix=prefix, name=name, client=client)
        except Exception as exc:  # noqa: BLE001
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
    m = done.meta
    print(json.dumps({"action": done.action, "sha256": m.sha256, "bytes": m.size, "name": m.name, "ctx": m.ctx,
                      "quant": m.quant, "uri": f"s3://{done.bucket}/{done.key}"}))


def _show_task(task: dict[str, Any]) -> None:
    table = Table(show_header=False, title=f"task {task['id']}")
    table.add_column("field", style="bold")
    table.add_column("value")
    for key in ("status", "model", "route", "device", "attempt"):
        table.add_row(key, str(task.get(key)))
    if task.get("output", {}).get("text") is not None:
        table.add_row("output", task["output"]["text"])
    if task.get("error"):
        table.add_row("error", f"{task['error'].get('code')}: {task['error'].get('message')}")
    if task.get("usage"):
        u = task["usage"]
        table.add_row("usage", f"{u.get('prompt_tokens')} prompt + {u.get('completion_tokens')} completion tokens"
                      + (f", {u['tokens_per_s']:.0f} tok/s" if u.get("tokens_per_s") else ""))
    out.print(table)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
