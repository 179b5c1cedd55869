"""Twilio's webhooks: the TwiML that connects a call to the gateway, incoming calls, status callbacks,
and answering-machine detection results.

They carry no API key: each request is authenticated by its X-Twilio-Signature instead, computed
over the public URL Twilio called, so PUBLIC_BASE_URL must be exactly what Twilio was given. What
they answer is documented like the rest of the API: 403 for a bad signature, 400 for a signed form
that is not one Twilio sends, 404 for an unknown call, 503 while the database is down.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.security import APIKeyHeader
from twilio.twiml.voice_response import Connect, VoiceResponse

from backend.calls import CallSidTaken, answer_inbound_call
from backend.capacity import AtCapacity
from backend.deps import AdmissionDep, SettingsDep, StorageDep
from backend.errors import CONFLICT, NOT_FOUND, STORAGE_DOWN, ErrorOut
from shared import call_status, jobs, twilio_auth
from shared.campaigns.dispatch import settle_call
from shared.errors import NotFound, StorageError, StorageUnavailable
from shared.settings import Settings
from shared.storage.base import ANSWERED_BY, Storage

log = logging.getLogger(__name__)

# The CallStatus values Twilio sends (https://www.twilio.com/docs/voice/api/call-resource#call-status-values).
TWILIO_CALL_STATUSES = (
    "queued", "initiated", "ringing", "in-progress", "answered", "completed", "busy", "failed", "no-answer", "canceled",
)
CALL_SID = r"CA[0-9a-fA-F]{32}"
DURATION_S = r"[0-9]{1,9}"  # whole seconds, and inside the column's integer range
# Who called: E.164, or `anonymous`, `client:alice`, a SIP URI… Stored as given, so no NUL (PostgreSQL's
# text refuses it) and a bounded length.
CALLER = r"[^\x00]{1,256}"

_signature = APIKeyHeader(
    name="X-Twilio-Signature",
    scheme_name="TwilioSignature",
    description="Twilio's HMAC-SHA1 of the public URL and the form fields, keyed with the auth token",
    auto_error=False,
)
_FORM = "application/x-www-form-urlencoded"
_OTHER_FIELDS: dict[str, Any] = {"type": "string"}
_VOICE_FORM = {"type": "object", "additionalProperties": _OTHER_FIELDS}
_STATUS_FORM = {
    "type": "object",
    "properties": {
        "CallStatus": {"type": "string", "enum": list(TWILIO_CALL_STATUSES)},
        "CallSid": {"type": "string", "pattern": f"^{CALL_SID}$"},
        "CallDuration": {"type": "string", "pattern": f"^{DURATION_S}$", "description": "Seconds, on the final callback"},
    },
    "required": ["CallStatus"],
    "additionalProperties": _OTHER_FIELDS,
}
_INBOUND_FORM = {
    "type": "object",
    "properties": {
        "To": {"type": "string", "description": "The number dialed: a configured E.164 number is answered"},
        "From": {"type": "string", "pattern": f"^{CALLER}$", "description": "The caller"},
        "CallSid": {"type": "string", "pattern": f"^{CALL_SID}$"},
    },
    "required": ["To", "CallSid"],
    "additionalProperties": _OTHER_FIELDS,
}
_INBOUND_STATUS_FORM = {**_STATUS_FORM, "required": ["CallStatus", "CallSid"]}
_AMD_FORM = {
    "type": "object",
    "properties": {
        "AnsweredBy": {"type": "string", "enum": list(ANSWERED_BY)},
        "CallSid": {"type": "string", "pattern": f"^{CALL_SID}$"},
    },
    "required": ["AnsweredBy"],
    "additionalProperties": _OTHER_FIELDS,
}
_TWIML: dict[str, Any] = {"content": {"application/xml": {}}}
_REFUSED = {
    400: {"model": ErrorOut, "description": "A signed form Twilio would not send (unknown status, bad field)"},
    403: {"model": ErrorOut, "description": "Missing or invalid X-Twilio-Signature"},
    **NOT_FOUND,
    **STORAGE_DOWN,
}

router = APIRouter(prefix="/twilio", tags=["twilio webhooks"], responses=_REFUSED)


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    """The form Twilio posts, for the OpenAPI (the route reads it itself: the signature covers it raw)."""
    return {"requestBody": {"required": False, "content": {_FORM: {"schema": schema}}}}


async def _signed_form(request: Request, settings: Settings, signature: str | None) -> dict[str, str]:
    """The request's form fields, once its signature has been checked against the public URL."""
    form = {key: str(value) for key, value in (await request.form()).items()}
    public_url = settings.public_base_url + request.url.path
    if request.url.query:
        public_url += "?" + request.url.query
    if not twilio_auth.is_valid(twilio_auth.signing_token(settings), public_url, form, signature):
        log.warning("rejected a webhook to %s: bad or missing X-Twilio-Signature", request.url.path)
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid X-Twilio-Signature")
    return form


_NOT_A_SID = "must be a Twilio call SID (CA and 32 hex digits)"


def _field(form: dict[str, str], name: str, pattern: str, why: str) -> str | None:
    value = form.get(name)
    if value is not None and not re.fullmatch(pattern, value):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{name} {why}")
    return value


async def _attach_sid(storage: Storage, call_id: str, sid: str) -> None:
    """A callback names its call's SID: record it if the call has none yet (the callback beat the dial's
    answer), refuse it if the call has another one or another call has this one."""
    call = await storage.get_call(call_id)
    if call.twilio_call_sid == sid:
        return
    if call.twilio_call_sid:
        raise HTTPException(status.HTTP_409_CONFLICT, f"CallSid {sid} is not the SID of call {call_id}")
    try:
        await storage.update_call(call_id, {"twilio_call_sid": sid})
    except StorageUnavailable:
        raise  # the database is down (503), not a conflict
    except StorageError as exc:  # it answered and refused: the SID is unique, another call holds it
        log.warning("call %s: could not record CallSid %s: %s", call_id, sid, exc)
        raise HTTPException(status.HTTP_409_CONFLICT, f"CallSid {sid} belongs to another call") from None


def connect_twiml(gateway_url: str, call_id: str) -> str:
    """`<Connect><Stream>` (bidirectional); ids travel as <Parameter>, since Twilio drops query strings."""
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=f"{gateway_url}/media")
    stream.parameter(name="call_id", value=call_id)
    response.append(connect)
    return str(response)


@router.post(
    "/voice/{call_id}",
    response_class=Response,
    responses={200: {"description": "TwiML: connect the call to the gateway", **_TWIML}},
    openapi_extra=_body(_VOICE_FORM),
)
async def voice(
    call_id: str, request: Request, settings: SettingsDep, storage: StorageDep,
    signature: Annotated[str | None, Depends(_signature)],
) -> Response:
    await _signed_form(request, settings, signature)
    await storage.get_call(call_id)
    return Response(connect_twiml(settings.public_gateway_url, call_id), media_type="application/xml")


@router.post(
    "/status/{call_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=CONFLICT,
    openapi_extra=_body(_STATUS_FORM),
)
async def status_callback(
    call_id: str, request: Request, settings: SettingsDep, storage: StorageDep,
    signature: Annotated[str | None, Depends(_signature)],
) -> Response:
    await _record_status(storage, call_id, await _signed_form(request, settings, signature))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _record_status(storage: Storage, call_id: str, form: dict[str, str]) -> None:
    """Apply a signed status callback to the call and queue its post-call jobs."""
    raw_status = form.get("CallStatus")
    if not raw_status:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "CallStatus is missing")
    if raw_status not in TWILIO_CALL_STATUSES:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unknown call status {raw_status!r}")
    new_status = call_status.normalize(raw_status)
    duration = _field(form, "CallDuration", DURATION_S, "must be a whole number of seconds")
    sid = _field(form, "CallSid", CALL_SID, _NOT_A_SID)
    if sid is not None:
        await _attach_sid(storage, call_id, sid)
    call = await storage.apply_call_status(
        call_id, new_status, duration=int(duration) if duration is not None else None
    )
    log.info("call %s: %s (seq %s) -> stored %s", call_id, new_status, form.get("SequenceNumber"), call.status)
    try:
        if call.status in call_status.TERMINAL:
            # A campaign's slot frees now (busy, no-answer: no gateway ever saw the call); the contact
            # is settled once whichever of this and the call-ended job comes first.
            await settle_call(storage, call)
            # Delayed: the gateway may still be flushing the last transcript lines (it queues its own).
            await jobs.notify_call_ended(storage, call_id, delay_s=jobs.STATUS_CALLBACK_DELAY_S)
        elif call.status == "in-progress":
            await jobs.notify_call_started(storage, call_id)
    except Exception:  # any failure: the status is stored; post-call jobs must not fail Twilio's callback
        log.exception("call %s: could not queue post-call jobs", call_id)


def _required(form: dict[str, str], name: str, pattern: str, why: str) -> str:
    value = _field(form, name, pattern, why)
    if value is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{name} is missing")
    return value


def reject_twiml(reason: str = "rejected") -> str:
    """`<Reject>`: the caller hears the call refused (`busy`: a busy tone) and no call row is written."""
    response = VoiceResponse()
    response.reject(reason=reason if reason != "rejected" else None)
    return str(response)


@router.post(
    "/inbound",
    response_class=Response,
    responses={
        200: {"description": "TwiML: connect the call to the number's agent, or reject it", **_TWIML},
        409: {"model": ErrorOut, "description": "The CallSid belongs to another call"},
    },
    openapi_extra=_body(_INBOUND_FORM),
)
async def inbound(
    request: Request, settings: SettingsDep, storage: StorageDep, admission: AdmissionDep,
    signature: Annotated[str | None, Depends(_signature)],
) -> Response:
    """Twilio's incoming-call webhook (a number's "A call comes in"): a configured number with inbound
    calls on is answered by its agent (an `inbound` call row, `ringing`, then the stream); any other
    number, or a voice gateway at capacity, gets `<Reject>`. A repeated webhook gets the same call."""
    form = await _signed_form(request, settings, signature)
    to_number = form.get("To")
    if to_number is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "To is missing")
    sid = _required(form, "CallSid", CALL_SID, _NOT_A_SID)
    caller = _field(form, "From", CALLER, "must be 1 to 256 characters without NUL")
    try:
        call = await answer_inbound_call(storage, admission, to_number=to_number, from_number=caller, call_sid=sid)
    except AtCapacity as exc:
        log.warning("incoming call %s to %s rejected: %s", sid, to_number, exc.reason)
        return Response(reject_twiml("busy"), media_type="application/xml")
    except CallSidTaken as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    if call is None:
        return Response(reject_twiml(), media_type="application/xml")
    log.info("incoming call %s from %s to %s: call %s", sid, caller, to_number, call.id)
    return Response(connect_twiml(settings.public_gateway_url, call.id), media_type="application/xml")


@router.post(
    "/inbound/status",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=CONFLICT,
    openapi_extra=_body(_INBOUND_STATUS_FORM),
)
async def inbound_status(
    request: Request, settings: SettingsDep, storage: StorageDep,
    signature: Annotated[str | None, Depends(_signature)],
) -> Response:
    """A number's "Call status changes" callback: Twilio names the call by its SID only (the URL is the
    number's, not the call's), so the call is found by the SID the incoming-call webhook stored."""
    form = await _signed_form(request, settings, signature)
    sid = _required(form, "CallSid", CALL_SID, _NOT_A_SID)
    call = await storage.find_call_by_sid(sid)
    if call is None:
        raise NotFound(f"call with CallSid {sid}")
    await _record_status(storage, call.id, form)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/amd/{call_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=CONFLICT,
    openapi_extra=_body(_AMD_FORM),
)
async def amd_result(
    call_id: str, request: Request, settings: SettingsDep, storage: StorageDep,
    signature: Annotated[str | None, Depends(_signature)],
) -> Response:
    """Twilio's AsyncAmdStatusCallback: who answered an outbound call (`AnsweredBy`), stored on the call."""
    form = await _signed_form(request, settings, signature)
    answered_by = form.get("AnsweredBy")
    if not answered_by:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "AnsweredBy is missing")
    if answered_by not in ANSWERED_BY:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"unknown AnsweredBy {answered_by!r}: one of {', '.join(ANSWERED_BY)}"
        )
    sid = _field(form, "CallSid", CALL_SID, _NOT_A_SID)
    if sid is not None:
        await _attach_sid(storage, call_id, sid)  # also the 404 of an unknown call
    await storage.update_call(call_id, {"answered_by": answered_by})
    log.info("call %s: answered by %s (after %s ms)", call_id, answered_by, form.get("MachineDetectionDuration"))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def whisper_twiml(caller_lines: list[str]) -> str:
    """What the person a call is transferred to hears before being connected: who it is and what the
    caller said last (the agent's summary is the caller's own words, so nothing is invented)."""
    response = VoiceResponse()
    said = " ".join(caller_lines[-2:])[:400]
    response.say(f"Transferred call from your AI receptionist. The caller said: {said}" if said
                 else "Transferred call from your AI receptionist.")
    return str(response)


@router.post(
    "/whisper/{call_id}",
    response_class=Response,
    responses={200: {"description": "TwiML: a short summary said to the person before the transfer connects",
                     **_TWIML}},
    openapi_extra=_body(_VOICE_FORM),
)
async def whisper(
    call_id: str, request: Request, settings: SettingsDep, storage: StorageDep,
    signature: Annotated[str | None, Depends(_signature)],
) -> Response:
    """The `url` of a transfer's `<Number>` (agent setting `whisper`): Twilio plays it to the person."""
    await _signed_form(request, settings, signature)
    await storage.get_call(call_id)
    lines = [line.text for line in await storage.list_transcripts(call_id)
             if line.speaker == "caller" and not line.metrics.get("screening")]
    return Response(whisper_twiml(lines), media_type="application/xml")
