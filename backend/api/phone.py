"""The browser phone: a page at /phone that calls an agent from the microphone, and its two routes.

The page itself is public (it holds no data: it asks for the API key and sends it as a Bearer token);
`POST /phone/calls` writes the call row the page then streams to, over the same Media Streams
protocol Twilio speaks, so the gateway cannot tell a browser from a phone line. The page calls an
agent, or dials a configured number: an inbound call, answered by that number's agent.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.calls import InboundDisabled, inbound_agent
from backend.deps import SettingsDep, StorageDep, require_api_key
from backend.errors import API_KEY_ROUTES, CONFLICT, MALFORMED_BODY, NOT_FOUND, ErrorOut
from backend.schemas import PHONE_NUMBER, CallOut, e164
from shared import call_status, jobs, stream_tokens, twilio_auth
from shared.storage.base import Call

router = APIRouter(tags=["phone"])
log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent.parent / "static"
# The only files the page loads; a fixed list, so no request path ever reaches the file system.
_ASSETS = {
    "phone.js": "text/javascript",
    "audio.js": "text/javascript",
    "capture-worklet.js": "text/javascript",
}
BROWSER_NUMBER = "browser"
"""`calls.to_number` of a browser call to an agent, `from_number` of one to a number: the browser has no
number, and the columns are free text."""
_NO_STORE = {"Cache-Control": "no-store"}


class BrowserCallRequest(BaseModel):
    """Body of POST /phone/calls that calls an agent."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(min_length=1)


class BrowserInboundCallRequest(BaseModel):
    """Body of POST /phone/calls that dials a configured number (inbound, answered by its agent)."""

    model_config = ConfigDict(extra="forbid")

    to_number: str = Field(description="A configured phone number (E.164)", json_schema_extra={"pattern": PHONE_NUMBER})

    @field_validator("to_number")
    @classmethod
    def _e164(cls, value: str) -> str:
        return e164(value, "to_number")


class BrowserCall(BaseModel):
    """Where the page streams a new call: the gateway's /media socket, with `call_id` in `start`."""

    call_id: str
    stream_url: str


@router.get("/phone", include_in_schema=False)
async def phone_page() -> FileResponse:
    return FileResponse(STATIC / "phone.html", media_type="text/html", headers=_NO_STORE)


@router.get("/phone/static/{name}", include_in_schema=False)
async def phone_asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such file: {name}")
    return FileResponse(STATIC / name, media_type=media_type, headers=_NO_STORE)


@router.post(
    "/phone/calls",
    status_code=status.HTTP_201_CREATED,
    response_model=BrowserCall,
    dependencies=[Depends(require_api_key)],
    responses={
        **API_KEY_ROUTES, **NOT_FOUND, **MALFORMED_BODY,
        409: {"model": ErrorOut, "description": "The number's inbound calls are disabled"},
    },
)
async def start_browser_call(
    body: BrowserCallRequest | BrowserInboundCallRequest, storage: StorageDep, settings: SettingsDep
) -> BrowserCall:
    """Write a call row (`queued` for an agent, `ringing` inbound for a number); the gateway marks it
    in-progress when the page's stream starts."""
    metadata: dict[str, Any] = {"channel": "browser"}
    if isinstance(body, BrowserInboundCallRequest):
        try:
            number, agent = await inbound_agent(storage, body.to_number)
        except InboundDisabled as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        call = await storage.create_call(
            agent_id=agent.id, to_number=number.number, from_number=BROWSER_NUMBER,
            metadata={**metadata, "phone_number_id": number.id}, direction="inbound",
        )
    else:
        agent = await storage.get_agent(body.agent_id)
        call = await storage.create_call(
            agent_id=agent.id, to_number=BROWSER_NUMBER, from_number=None, metadata=metadata
        )
    token = stream_tokens.issue(twilio_auth.signing_token(settings), call.id)
    return BrowserCall(call_id=call.id, stream_url=f"{settings.public_gateway_url}/media?token={token}")


@router.post(
    "/phone/calls/{call_id}/end",
    response_model=CallOut,
    dependencies=[Depends(require_api_key)],
    responses={**API_KEY_ROUTES, **NOT_FOUND, **CONFLICT},
)
async def end_browser_call(call_id: str, storage: StorageDep) -> CallOut:
    """Hang up from the page: a call whose stream never started is `canceled`.

    A started call needs nothing here: the gateway completes it when the socket closes (with its
    duration), and a call that has already ended is returned unchanged, so a retry is harmless.
    """
    call: Call = await storage.get_call(call_id)
    if call.metadata.get("channel") != "browser":
        raise HTTPException(status.HTTP_409_CONFLICT, f"call {call_id} is not a browser call")
    if call_status.rank(call.status) < call_status.rank("in-progress"):  # queued, initiated or ringing
        call = await storage.apply_call_status(call.id, "canceled")
        try:
            await jobs.notify_call_ended(storage, call.id)  # webhooks see every call that ended
        except Exception:  # the status is stored; post-call jobs must not fail the hang-up
            log.exception("call %s: could not queue post-call jobs", call.id)
    return CallOut.model_validate(call.model_dump())
