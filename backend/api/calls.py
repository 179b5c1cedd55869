"""Calls: place one, list them, read one with its transcript, hang up."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status

from backend.calls import place_outbound_call
from backend.capacity import AtCapacity
from backend.deps import AdmissionDep, SettingsDep, StorageDep, TelephonyDep
from backend.errors import AT_CAPACITY, CONFLICT, MALFORMED_BODY, NOT_FOUND, PROVIDER_REFUSED, unprocessable
from backend.schemas import MAX_OFFSET, CallOut, CallPage, CallStatusName, OutboundCallRequest, TranscriptOut
from backend.telephony.base import TelephonyError
from backend.telephony.simulator import parse_script
from shared import call_status
from shared.errors import NotFound
from shared.storage.base import Call

router = APIRouter(prefix="/calls", tags=["calls"])


def _out(call: Call) -> CallOut:
    return CallOut.model_validate(call, from_attributes=True)


@router.post(
    "/outbound", status_code=status.HTTP_201_CREATED, response_model=CallOut,
    responses={**NOT_FOUND, **PROVIDER_REFUSED, **MALFORMED_BODY, **AT_CAPACITY},
)
async def outbound_call(
    body: OutboundCallRequest, storage: StorageDep, telephony: TelephonyDep, admission: AdmissionDep,
    settings: SettingsDep,
) -> CallOut:
    """Write the call row, then dial: an unknown agent is a 404 and a voice gateway at capacity a 503
    with Retry-After (nothing written for either); a refused dial keeps the row as `failed` with the
    provider's reason and answers 502."""
    if "simulate" in body.metadata:
        where = ("body", "metadata", "simulate")
        if settings.telephony_provider != "simulator":
            raise unprocessable(where, "metadata.simulate needs TELEPHONY_PROVIDER=simulator")
        try:
            parse_script(body.metadata["simulate"])
        except TelephonyError as exc:
            raise unprocessable(where, exc.reason) from None
    try:
        call = await place_outbound_call(
            storage,
            telephony,
            admission,
            agent_id=body.agent_id,
            to_number=body.to_number,
            from_number=settings.twilio_from_number,
            metadata=body.metadata,
        )
    except TelephonyError as exc:
        raise _provider_refused("the phone provider refused the call", exc) from None
    except AtCapacity as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"{exc.reason}: retry in {exc.retry_after_s} s",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None
    return _out(call)


@router.get("", response_model=CallPage)
async def list_calls(
    storage: StorageDep,
    agent_id: str | None = None,
    status_filter: Annotated[CallStatusName | None, Query(alias="status")] = None,
    outcome: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = None,
    sentiment: Annotated[Literal["positive", "neutral", "negative"] | None, Query()] = None,
    campaign_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> CallPage:
    try:
        calls = await storage.list_calls(
            agent_id=agent_id, status=status_filter, outcome=outcome, sentiment=sentiment,
            campaign_id=campaign_id, limit=limit + 1, offset=offset,
        )
    except NotFound:  # a malformed agent_id or campaign_id matches nothing
        calls = []
    return CallPage(data=[_out(c) for c in calls[:limit]], limit=limit, offset=offset, has_more=len(calls) > limit)


@router.get("/{call_id}", response_model=CallOut, responses=NOT_FOUND)
async def get_call(call_id: str, storage: StorageDep) -> CallOut:
    return _out(await storage.get_call(call_id))


@router.get("/{call_id}/transcripts", response_model=list[TranscriptOut], responses=NOT_FOUND)
async def get_transcripts(call_id: str, storage: StorageDep) -> list[TranscriptOut]:
    await storage.get_call(call_id)
    lines = await storage.list_transcripts(call_id)
    return [TranscriptOut.model_validate(line.model_dump()) for line in lines]


@router.post(
    "/{call_id}/hangup", status_code=status.HTTP_202_ACCEPTED, response_model=CallOut,
    responses={**NOT_FOUND, **CONFLICT, **PROVIDER_REFUSED},
)
async def hangup(call_id: str, storage: StorageDep, telephony: TelephonyDep) -> CallOut:
    """Ask the provider to end the call; its status callback then records the end."""
    call = await storage.get_call(call_id)
    if call.status in call_status.TERMINAL:
        raise HTTPException(status.HTTP_409_CONFLICT, f"call {call_id} has already ended ({call.status})")
    if not call.twilio_call_sid:  # a browser call, or one the provider never took: nothing to hang up
        raise HTTPException(status.HTTP_409_CONFLICT, f"call {call_id} is not on the phone network (no call SID)")
    try:
        await telephony.hangup(call)
    except TelephonyError as exc:
        raise _provider_refused("the phone provider refused to hang up", exc) from None
    return _out(call)


def _provider_refused(what: str, exc: TelephonyError) -> HTTPException:
    """A 502 with the provider's words and code (`backend.errors.ProviderErrorOut`)."""
    detail = {"message": f"{what}: {exc.reason}", "provider_code": exc.code}
    return HTTPException(status.HTTP_502_BAD_GATEWAY, detail)
