"""Twilio's webhooks: the TwiML that connects a call to the gateway, and status callbacks.

They carry no API key: each request is authenticated by its X-Twilio-Signature instead, computed
over the public URL Twilio called, so PUBLIC_BASE_URL must be exactly what Twilio was given.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request, Response, status
from twilio.twiml.voice_response import Connect, VoiceResponse

from backend.deps import SettingsDep, StorageDep
from shared import call_status, jobs, twilio_auth
from shared.settings import Settings

router = APIRouter(prefix="/twilio", tags=["twilio webhooks"])
log = logging.getLogger(__name__)


async def _signed_form(request: Request, settings: Settings) -> dict[str, str]:
    """The request's form fields, once its signature has been checked against the public URL."""
    form = {key: str(value) for key, value in (await request.form()).items()}
    public_url = settings.public_base_url + request.url.path
    if request.url.query:
        public_url += "?" + request.url.query
    signature = request.headers.get("X-Twilio-Signature")
    if not twilio_auth.is_valid(twilio_auth.signing_token(settings), public_url, form, signature):
        log.warning("rejected a webhook to %s: bad or missing X-Twilio-Signature", request.url.path)
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid X-Twilio-Signature")
    return form


def connect_twiml(gateway_url: str, call_id: str) -> str:
    """`<Connect><Stream>` (bidirectional); ids travel as <Parameter>, since Twilio drops query strings."""
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=f"{gateway_url}/media")
    stream.parameter(name="call_id", value=call_id)
    response.append(connect)
    return str(response)


@router.post("/voice/{call_id}", response_class=Response)
async def voice(call_id: str, request: Request, settings: SettingsDep, storage: StorageDep) -> Response:
    await _signed_form(request, settings)
    await storage.get_call(call_id)
    return Response(connect_twiml(settings.public_gateway_url, call_id), media_type="application/xml")


@router.post("/status/{call_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def status_callback(call_id: str, request: Request, settings: SettingsDep, storage: StorageDep) -> Response:
    form = await _signed_form(request, settings)
    raw_status = form.get("CallStatus")
    if not raw_status:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "CallStatus is missing")
    try:
        new_status = call_status.normalize(raw_status)
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    duration = form.get("CallDuration")
    if duration is not None and not duration.isdigit():
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "CallDuration must be a whole number of seconds")
    call = await storage.apply_call_status(
        call_id,
        new_status,
        duration=int(duration) if duration is not None else None,
        twilio_call_sid=form.get("CallSid"),
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
