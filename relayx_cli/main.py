"""`relayx`: run the services, manage agents, place and follow calls, benchmark."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from relayx_cli.campaigns import campaigns_app, dnc_app
from relayx_cli.client import APIError, BackendClient
from relayx_cli.output import fail
from relayx_cli.services import Services
from shared.settings import Settings

app = typer.Typer(help="RelayX: self-hosted AI phone agents.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
agents_app = typer.Typer(help="Create and list agents.", no_args_is_help=True)
calls_app = typer.Typer(help="Inspect calls.", no_args_is_help=True)
app.add_typer(agents_app, name="agents")
app.add_typer(calls_app, name="calls")
app.add_typer(campaigns_app, name="campaigns")
app.add_typer(dnc_app, name="dnc")

DEMO_AGENT = {
    "name": "RelayX Demo",
    "greeting": "Hi, this is Ava from Bright Smile Dental. How can I help you today?",
    "prompt": (
        "You answer calls for Bright Smile Dental and book teeth cleanings. Open Monday to Friday, "
        "9am to 5pm. A cleaning costs 80 dollars and takes 45 minutes. Ask for the day and time that "
        "suits the caller, confirm it, and thank them."
    ),
    "settings": {"business": "Bright Smile Dental", "expected_answers": ["cleaning", "Tuesday"]},
}
DEMO_NUMBER = "+15555550123"


def _say(message: str) -> None:
    typer.secho(message, fg=typer.colors.BRIGHT_BLACK, err=True)


def format_line(line: dict[str, Any]) -> str:
    """One transcript line, with the turn's latencies for the agent's lines."""
    metrics = line.get("metrics") or {}
    speaker = line["speaker"]
    latency = ""
    if speaker == "agent" and "voice_to_voice_ms" in metrics:
        stages = " · ".join(
            f"{k.removesuffix('_ms').replace('llm_first_token', 'llm').replace('tts_first_audio', 'tts')} {metrics[k]}"
            for k in ("end_of_turn_ms", "stt_ms", "llm_first_token_ms", "tts_first_audio_ms") if k in metrics
        )
        latency = f"  [{metrics['voice_to_voice_ms']} ms voice-to-voice: {stages}]"
    cut = " (interrupted)" if metrics.get("interrupted") else ""
    return f"{speaker:>6}: {line['text']}{cut}{latency}"


def parse_script_file(path: Path) -> list[dict[str, Any]]:
    """A script: JSON (a list of lines), or text with one line per caller turn.

    Text lines may be `wav: file.wav` (a recording) and may start with `[barge-in 800]` to speak
    800 ms into the agent's reply instead of waiting for it to finish.
    """
    raw = path.read_text()
    if path.suffix == ".json":
        return list(json.loads(raw))
    lines: list[dict[str, Any]] = []
    for text in raw.splitlines():
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        spec: dict[str, Any] = {}
        match = re.match(r"^\[barge-in\s+(\d+)\]\s*(.*)$", text)
        if match:
            spec["barge_in_after_ms"] = int(match.group(1))
            text = match.group(2)
        if text.startswith("wav:"):
            spec["wav"] = str((path.parent / text[4:].strip()).resolve())
        else:
            spec["text"] = text
        lines.append(spec)
    return lines


def follow_call(client: BackendClient, call_id: str) -> dict[str, Any]:
    for line in client.follow(call_id):
        typer.echo(format_line(line))
    return client.get_call(call_id)


@app.command()
def serve(
    backend: Annotated[bool, typer.Option(help="Run the backend (REST API, port BACKEND_PORT).")] = True,
    gateway: Annotated[bool, typer.Option(help="Run the voice gateway (port GATEWAY_PORT).")] = True,
) -> None:
    """Run the backend and the gateway until Ctrl-C."""
    settings = Settings()
    services = Services(settings)
    services.start(backend=backend, gateway=gateway)
    try:
        _say("starting services (the gateway loads and warms its models first)…")
        services.wait_healthy(progress=_say)
        _say(f"logs: {', '.join(map(str, services.log_files))}")
        _say(f"backend http://127.0.0.1:{settings.backend_port}  ·  gateway ws://127.0.0.1:{settings.gateway_port}"
             f"/media  ·  API key in {settings.data_dir / 'api_key'} (or RELAYX_API_KEY)  ·  Ctrl-C to stop")
        services.wait()
    finally:
        services.stop()


@app.command()
def migrate() -> None:
    """Apply the database migrations not applied yet (the backend also does this at start)."""
    from shared.storage import build_storage

    async def run() -> list[str]:
        storage = build_storage(Settings())
        await storage.open()
        try:
            return await storage.migrate()
        finally:
            await storage.close()

    applied = asyncio.run(run())
    typer.echo(f"applied {', '.join(applied)}" if applied else "database is up to date")


@app.command()
def demo(
    keep_running: Annotated[bool, typer.Option(help="Keep the services up after the call, for curl.")] = True,
) -> None:
    """Start everything on the embedded defaults, place a simulated call and print its transcript."""
    settings = Settings()
    if settings.telephony_provider != "simulator":
        fail("the demo needs TELEPHONY_PROVIDER=simulator (the embedded default)")
    client = BackendClient(settings)
    services = Services(settings)
    if not client.healthy():
        _say("starting backend and gateway (loading Whisper, Qwen2.5 and Piper; the first run also joins the "
             "LLM's slices, ~1 min)…")
        services.start()
    try:
        services.wait_healthy(progress=_say)
        if services.log_files:
            _say(f"service logs: {', '.join(map(str, services.log_files))}")
        agent = next((a for a in client.agents() if a["name"] == DEMO_AGENT["name"]), None)
        agent = agent or client.create_agent(DEMO_AGENT)
        call = client.call(agent["id"], DEMO_NUMBER, {})
        _say(f"calling {DEMO_NUMBER} on the simulated line (call {call['id']})…")
        final = follow_call(client, call["id"])
        _say(f"call {final['status']}, {final['duration']} s; waiting for its post-call analysis…")
        analysis = client.wait_for_analysis(call["id"], timeout_s=120)
        if analysis:
            typer.echo(f"analysis: {analysis['outcome']} · {analysis['sentiment']} · {analysis['summary']}")
        _say(f"see it again with: relayx calls show {call['id']}")
        if keep_running and services.processes:
            _say(f"services keep running for curl: {client.base} (API key: {settings.api_key}) · Ctrl-C to stop")
            services.wait()
    except APIError as exc:
        fail(str(exc))
    finally:
        services.stop()


@agents_app.command("create")
def agents_create(
    name: Annotated[str, typer.Option(help="The agent's name (it introduces itself with it).")],
    prompt: Annotated[str, typer.Option(help="What the agent does and the facts it may use.")],
    greeting: Annotated[str | None, typer.Option(help="First words when the call connects.")] = None,
    business: Annotated[str | None, typer.Option(help="Business name (helps STT and the LLM).")] = None,
    temperature: float = 0.6,
    max_tokens: int = 120,
) -> None:
    """Create an agent and print its id."""
    settings: dict[str, Any] = {"business": business} if business else {}
    body = {"name": name, "prompt": prompt, "greeting": greeting, "settings": settings,
            "llm": {"temperature": temperature, "max_tokens": max_tokens}}
    try:
        agent = BackendClient(Settings()).create_agent(body)
    except APIError as exc:
        fail(str(exc))
    typer.echo(agent["id"])


@agents_app.command("list")
def agents_list() -> None:
    """List agents."""
    try:
        for agent in BackendClient(Settings()).agents():
            typer.echo(f"{agent['id']}  {agent['name']}")
    except APIError as exc:
        fail(str(exc))


@app.command()
def call(
    agent: Annotated[str, typer.Argument(help="Agent id or name.")],
    number: Annotated[str, typer.Argument(help="E.164 number, e.g. +14155550100.")],
    simulate: Annotated[Path | None, typer.Option(help="Caller script for the simulated line (text or JSON).")] = None,
    follow: Annotated[bool, typer.Option(help="Print the transcript live until the call ends.")] = True,
) -> None:
    """Place an outbound call (on Twilio, or on the simulated line)."""
    client = BackendClient(Settings())
    metadata: dict[str, Any] = {}
    if simulate is not None:
        metadata["simulate"] = parse_script_file(simulate)
    try:
        placed = client.call(client.resolve_agent(agent)["id"], number, metadata)
        typer.echo(f"call {placed['id']} {placed['status']}")
        if follow:
            final = follow_call(client, placed["id"])
            typer.echo(f"call {final['status']}, {final['duration']} s")
    except APIError as exc:
        fail(str(exc))


@calls_app.command("show")
def calls_show(call_id: str) -> None:
    """A call's status, timings, transcript and analysis."""
    client = BackendClient(Settings())
    try:
        info = client.get_call(call_id)
        typer.echo(f"call {info['id']}  to {info['to_number']}  {info['status']}  duration {info['duration']} s")
        typer.echo(f"created {info['created_at']}  started {info['started_at']}  ended {info['ended_at']}")
        if info.get("error"):
            typer.echo(f"error: {info['error']}")
        for line in client.transcript(call_id):
            typer.echo(format_line(line))
        analysis = client.analysis(call_id)
        if analysis:
            typer.echo("analysis:")
            for key in ("status", "outcome", "sentiment", "summary", "key_points", "data", "error"):
                if analysis.get(key) not in (None, [], {}):
                    typer.echo(f"  {key}: {analysis[key]}")
    except APIError as exc:
        fail(str(exc))


@app.command()
def worker() -> None:
    """Run durable job workers (post-call analysis, webhooks, campaign dispatch) against DATABASE_URL."""
    from backend.dialing import run_dispatching_worker

    asyncio.run(run_dispatching_worker(Settings()))


@app.command()
def bench(
    what: Annotated[str, typer.Argument(help="voice (calls through the gateway) or analysis (post-call).")] = "voice",
    calls: Annotated[int, typer.Option(help="Simultaneous calls (see --start).")] = 1,
    lines: Annotated[int, typer.Option(help="Caller lines each call says.")] = 5,
    start: Annotated[str, typer.Option(help="together (all dial at once) or staggered (see --stagger-s).")] = "together",
    stagger_s: Annotated[float, typer.Option(help="Seconds between two calls' starts when staggered.")] = 2.3,
    realistic: Annotated[bool, typer.Option(
        "--realistic/--quick",
        help="Realistic caller lines (3-5 s, several voices, phone band, line noise) or the five short clean ones.",
    )] = True,
    test_set: Annotated[str, typer.Option(
        "--set",
        help="phone: play the committed phone-band test set (tests/data/phone_set), --calls at a time, and score "
             "it: WER of stored caller lines, turns split wrongly, end_of_turn p50, repeats, refusals, overlaps.",
    )] = "",
    concurrency: Annotated[str, typer.Option(help="More call counts to run after --calls, e.g. 2,4.")] = "",
    find_capacity: Annotated[bool, typer.Option(
        help="Ramp 1, 2, 3… calls until a level fails; report the largest real-time level.")] = False,
    max_calls: Annotated[int, typer.Option(help="Where --find-capacity stops climbing.")] = 8,
    media_streams: Annotated[int, typer.Option(help="Streams for the media-path-only run (0 = skip).")] = 0,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the figures.")] = Path(
        "bench-results/bench.json"),
    model: Annotated[str, typer.Option(
        help="Analysis: the model to measure: 0.5b (bundled, the default), 1.5b (the analysis-1.5b extra) "
             "or a GGUF path; unset = ANALYSIS_LLM_* as configured.")] = "",
    verbose: Annotated[bool, typer.Option(help="Analysis: print each raw answer (with its evidence quote).")] = False,
) -> None:
    """Voice: calls through the gateway as Twilio would place them: turns answered, voice-to-voice
    p50/p95, gaps heard inside replies, per-stage timings, CPU/RSS per call, real-time concurrency.
    Analysis: accuracy, valid-JSON rate and seconds per call of the post-call analysis on tests/data."""
    if what == "analysis":
        from relayx_cli import analysis_bench

        analysis_bench.main(Settings(), model=model, verbose=verbose,
                            json_out=json_out.with_name("analysis.json") if json_out == Path(
                                "bench-results/bench.json") else json_out)
        return
    if what != "voice":
        fail(f"unknown benchmark {what!r}: use voice or analysis")
    if start not in ("together", "staggered"):
        fail(f"--start {start!r}: use together or staggered")
    if calls < 1 or lines < 1 or max_calls < 1:
        fail("--calls, --lines and --max-calls must be at least 1")
    if test_set not in ("", "phone"):
        fail(f"--set {test_set!r}: the only test set is phone")
    if test_set and find_capacity:
        fail("--set and --find-capacity do not go together: the ramp uses generated lines")
    from relayx_cli.bench import Scenario, run_bench

    levels = [int(x) for x in concurrency.split(",") if x.strip()]
    scenario = Scenario(lines=lines, start="staggered" if start == "staggered" else "together",
                        stagger_s=stagger_s, realistic=realistic, test_set=test_set or None)
    sys.exit(run_bench(Settings(), calls=calls, scenario=scenario, levels=levels, find_capacity=find_capacity,
                       max_calls=max_calls, media_streams=media_streams, json_out=json_out))


if __name__ == "__main__":
    app()
