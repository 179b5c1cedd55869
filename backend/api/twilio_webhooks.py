"""Twilio's webhooks: the TwiML that connects a call to the gateway, and status callbacks.

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

from backend.deps import SettingsDep, StorageDep
from backend.errors import CONFLICT, NOT_FOUND, STORAGE_DOWN, ErrorOut
from shared import call_status, jobs, twilio_auth
from shared.errors import StorageError, StorageUnavailable
from shared.settings import Settings
from shared.storage.base import Storage

log = logging.getLogger(__name__)

# The CallStatus values Twilio sends (https://www.twilio.com/docs/voice/api/call-resource#call-status-values).
TWILIO_CALL_STATUSES = (
    "queued", "initiated", "ringing", "in-progress", "answered", "completed", "busy", "failed", "no-answer", "canceled",
)
CALL_SID = r"CA[0-9a-fA-F]{32}"
DURATION_S = r"[0-9]{1,9}"  # whole seconds, and inside the column's integer range

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
    responses={200: {"description": "TwiML: connect the call to the gateway", "content": {"application/xml": {}}}},
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
    form = await _signed_form(request, settings, signature)
    raw_status = form.get("CallStatus")
    if not raw_status:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "CallStatus is missing")
    if raw_status not in TWILIO_CALL_STATUSES:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unknown call status {raw_status!r}")
    new_status = call_status.normalize(raw_status)
    duration = _field(form, "CallDuration", DURATION_S, "must be a whole number of seconds")
    sid = _field(form, "CallSid", CALL_SID, "must be a Twilio call SID (CA and 32 hex digits)")
    if sid is not None:
        await _attach_sid(storage, call_id, sid)
    call = await storage.apply_call_status(
        call_id, new_status, duration=int(duration) if duration is not None else None
    )
    log.info("call %s: %s (seq %s) -> stored %s", call_id, new_status, form.get("SequenceNumber"), call.status)
    try:
        if call.status in call_status.TERMINAL:
            # Delayed: the gateway may still be flushing the last transcript lines (it queues its own).
            await jobs.notify_call_ended(storage, call_id, delay_s=jobs.STATUS_CALLBACK_DELAY_S)
        elif call.status == "in-progress":
            await jobs.notify_call_started(storage, call_id)
    except Exception:  # any failure: the status is stored; post-call jobs must not fail Twilio's callback
        log.exception("call %s: could not queue post-call jobs", call_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
