"""`relayx campaigns …` and `relayx dnc …`: campaigns from a CSV, followed with a progress bar."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

import typer

from relayx_cli.client import APIError, BackendClient
from relayx_cli.output import fail
from shared.campaigns.config import DAYS
from shared.settings import Settings

campaigns_app = typer.Typer(
    help="Call many contacts from a CSV: create, follow, pause, resume, cancel.", no_args_is_help=True
)
dnc_app = typer.Typer(help="The do-not-call list.", no_args_is_help=True)

_WINDOW = re.compile(r"^\s*([a-z]{3}(?:\s*[-,]\s*[a-z]{3})*)\s+(\d{2}:\d{2})\s*-\s*(\d{2}:\d{2})\s*$")
BAR_WIDTH = 30
FINAL = ("completed", "cancelled")


def parse_window(text: str) -> dict[str, Any]:
    """`mon-fri 09:00-17:00` or `mon,wed,sat 10:00-12:30` as the API's window; ValueError otherwise."""
    match = _WINDOW.match(text.lower())
    if match is None:
        raise ValueError(f"window {text!r}: write it as days and hours, e.g. 'mon-fri 09:00-17:00'")
    days: list[str] = []
    for part in re.split(r"\s*,\s*", match.group(1)):
        ends = [d.strip() for d in part.split("-")]
        if any(d not in DAYS for d in ends) or len(ends) > 2:
            raise ValueError(f"window {text!r}: days are {', '.join(DAYS)}")
        first, last = DAYS.index(ends[0]), DAYS.index(ends[-1])
        if last < first:
            raise ValueError(f"window {text!r}: {ends[0]}-{ends[-1]} runs backwards")
        days += [d for d in DAYS[first : last + 1] if d not in days]
    return {"days": days, "start": match.group(2), "end": match.group(3)}


def progress_line(campaign: dict[str, Any]) -> str:
    """One line: a bar of the contacts done, and the counts behind it."""
    p = campaign.get("progress") or {}
    total = int(p.get("total") or 0)
    done = sum(int(p.get(k) or 0) for k in ("completed", "failed", "skipped", "cancelled"))
    filled = round(BAR_WIDTH * done / total) if total else 0
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    counts = " ".join(f"{k} {p.get(k, 0)}" for k in ("calling", "pending", "completed", "failed", "skipped"))
    return f"[{bar}] {done}/{total} {campaign['status']}: {counts}, {p.get('calls_placed', 0)} calls placed"


def _client() -> BackendClient:
    return BackendClient(Settings())


def _follow(client: BackendClient, campaign_id: str, poll_s: float) -> dict[str, Any]:
    """Redraw the progress line until the campaign stops running (paused, completed, cancelled)."""
    while True:
        campaign = client.campaign(campaign_id)
        typer.echo("\r" + progress_line(campaign), nl=False)
        if campaign["status"] != "running":
            typer.echo()
            return campaign
        time.sleep(poll_s)


@campaigns_app.command("create")
def create(
    csv: Annotated[
        str, typer.Option("--csv", help="Contacts: phone_number, optional timezone, any variables")
    ],
    agent: Annotated[str, typer.Option(help="The agent's name or id")],
    name: Annotated[str | None, typer.Option(help="Default: the CSV's file name")] = None,
    from_number: Annotated[str | None, typer.Option(help="The caller ID (E.164)")] = None,
    max_concurrency: Annotated[int, typer.Option(min=1, max=100)] = 3,
    calls_per_second: Annotated[float, typer.Option("--cps", min=0.01, max=20)] = 1.0,
    window: Annotated[str | None, typer.Option(help="e.g. 'mon-fri 09:00-17:00' (default: any time)")] = None,
    timezone: Annotated[
        str, typer.Option(help="IANA zone of the window (contacts may have their own)")
    ] = "UTC",
    max_attempts: Annotated[int, typer.Option(min=1, max=20)] = 3,
    retry_delay_s: Annotated[float, typer.Option("--retry-delay", min=0)] = 3600.0,
    retry_on: Annotated[str, typer.Option(help="Comma-separated results to retry")] = "busy,no-answer,failed",
    start: Annotated[
        bool, typer.Option("--start/--draft", help="Start dialing now, or leave a draft")
    ] = True,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Show progress until it stops")
    ] = False,
) -> None:
    """Create a campaign from a CSV; bad rows are listed by row number and nothing is created."""
    client = _client()
    try:
        config: dict[str, Any] = {
            "name": name or csv.rsplit("/", 1)[-1].removesuffix(".csv"),
            "agent_id": client.resolve_agent(agent)["id"],
            "from_number": from_number,
            "max_concurrency": max_concurrency,
            "calls_per_second": calls_per_second,
            "window": parse_window(window) if window else None,
            "timezone": timezone,
            "start": start,
            "retry": {
                "max_attempts": max_attempts,
                "delay_s": retry_delay_s,
                "on": [r.strip() for r in retry_on.split(",") if r.strip()],
            },
        }
        campaign = client.upload_campaign(csv, config)
    except (APIError, ValueError, OSError) as exc:
        fail(_readable(exc))
        return
    typer.echo(
        f"campaign {campaign['id']} ({campaign['name']}): {campaign['progress']['total']} contacts, "
        f"{campaign['status']}"
    )
    if follow and campaign["status"] == "running":
        _follow(client, campaign["id"], 1.0)


def _readable(exc: Exception) -> str:
    """A 422's problems one per line (`row 3, phone_number: …`), anything else as it is."""
    text = str(exc)
    detail = exc.detail if isinstance(exc, APIError) else None
    if not isinstance(detail, list):
        return text
    lines = []
    for problem in detail:
        loc = [str(x) for x in problem.get("loc", [])[1:]]
        where = (
            f"row {loc[1]}" + (f", {loc[2]}" if len(loc) > 2 else "")
            if loc[:1] == ["file"]
            else ".".join(loc)
        )
        lines.append(f"  {where}: {problem.get('msg')}")
    return "the backend refused the campaign:\n" + "\n".join(lines)


@campaigns_app.command("show")
def show(
    campaign_id: str,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Redraw until it stops running")
    ] = True,
    poll_s: Annotated[float, typer.Option(min=0.1)] = 1.0,
    contacts: Annotated[
        bool, typer.Option("--contacts", help="List every contact's attempts and outcome")
    ] = False,
) -> None:
    """A campaign's progress (a bar, redrawn while it runs) and, with --contacts, each contact."""
    client = _client()
    try:
        campaign = _follow(client, campaign_id, poll_s) if follow else client.campaign(campaign_id)
        if not follow:
            typer.echo(progress_line(campaign))
        if contacts:
            for c in client.campaign_contacts(campaign_id):
                typer.echo(
                    f"  {c['row_number']:>5} {c['phone_number']:<16} {c['status']:<10} "
                    f"attempts {c['attempts']}  {c['last_outcome'] or ''}"
                )
    except APIError as exc:
        fail(str(exc))


@campaigns_app.command("list")
def list_campaigns() -> None:
    """Every campaign, newest first, with its progress."""
    try:
        for campaign in _client().campaigns():
            typer.echo(f"{campaign['id']}  {campaign['name']:<24.24} {progress_line(campaign)}")
    except APIError as exc:
        fail(str(exc))


def _mover(action: str) -> Any:
    def move(campaign_id: str) -> None:
        try:
            typer.echo(progress_line(_client().move_campaign(campaign_id, action)))
        except APIError as exc:
            fail(str(exc))

    move.__doc__ = f"{action.capitalize()} a campaign."
    return move


for _action in ("start", "pause", "resume", "cancel"):
    campaigns_app.command(_action)(_mover(_action))


@dnc_app.command("add")
def dnc_add(numbers: list[str], reason: Annotated[str | None, typer.Option()] = None) -> None:
    """Add numbers to the do-not-call list."""
    try:
        added = _client().add_do_not_call(numbers, reason)
    except APIError as exc:
        fail(str(exc))
        return
    typer.echo(f"{added['added']} added ({added['total_given']} given)")


@dnc_app.command("import")
def dnc_import(csv: str) -> None:
    """Import a CSV with a phone_number (or number) column."""
    try:
        added = _client().import_do_not_call(csv)
    except (APIError, OSError) as exc:
        fail(_readable(exc))
        return
    typer.echo(f"{added['added']} added ({added['total_given']} given)")
