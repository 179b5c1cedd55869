"""Placing calls through Twilio's official SDK."""

from __future__ import annotations

import asyncio
from typing import Any

from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from backend.telephony.base import STATUS_EVENTS, PlacedCall, TelephonyError, amd_url, status_url, voice_url
from shared.errors import ConfigurationError
from shared.settings import Settings
from shared.storage.base import Agent, Call

TWILIO_API = "https://api.twilio.com"
MACHINE_DETECTION = "DetectMessageEnd"
"""Wait for the end of a machine's greeting (the beep) before reporting it: `AnsweredBy` then says
`machine_end_beep` / `_silence` / `_other`, the moment a left message would be heard whole."""


class _BaseURLHttpClient(TwilioHttpClient):
    """Sends the SDK's requests to TWILIO_API_BASE_URL (a regional edge, a proxy, or a test's fake)."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._base_url = base_url.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        if url.startswith(TWILIO_API):
            url = self._base_url + url[len(TWILIO_API) :]
        return super().request(method, url, *args, **kwargs)


class TwilioTelephony:
    """The SDK is synchronous (requests): its calls run in a thread so the event loop stays free."""

    def __init__(self, settings: Settings) -> None:
        missing = [
            name
            for name, value in (
                ("TWILIO_ACCOUNT_SID", settings.twilio_account_sid),
                ("TWILIO_AUTH_TOKEN", settings.twilio_auth_token),
                ("TWILIO_FROM_NUMBER", settings.twilio_from_number),
            )
            if not value
        ]
        if missing:
            raise ConfigurationError(f"TELEPHONY_PROVIDER=twilio needs {', '.join(missing)}")
        http_client = None
        if settings.twilio_api_base_url != TWILIO_API:
            http_client = _BaseURLHttpClient(settings.twilio_api_base_url, timeout=15)
        self._client = Client(settings.twilio_account_sid, settings.twilio_auth_token, http_client=http_client)
        self._from = settings.twilio_from_number
        self._public = settings.public_base_url

    async def place_call(self, call: Call, agent: Agent) -> PlacedCall:
        """Dial; with the agent's voicemail detection on, Twilio's answering-machine detection runs
        alongside the stream (async: the call connects at once) and posts `AnsweredBy` to /twilio/amd."""
        detection: dict[str, str] = {}
        if agent.settings.voicemail.detect:
            detection = {
                "machine_detection": MACHINE_DETECTION,
                "async_amd": "true",
                "async_amd_status_callback": amd_url(self._public, call.id),
                "async_amd_status_callback_method": "POST",
            }

        def create() -> PlacedCall:
            created = self._client.calls.create(
                to=call.to_number,
                from_=self._from,
                url=voice_url(self._public, call.id),
                method="POST",
                status_callback=status_url(self._public, call.id),
                status_callback_event=STATUS_EVENTS,
                status_callback_method="POST",
                **detection,
            )
            return PlacedCall(sid=str(created.sid), status=str(created.status or "queued"))

        return await asyncio.to_thread(_twilio_errors, create)

    async def update_twiml(self, call: Call, twiml: str) -> None:
        """Redirect a live call to `twiml` (a transfer's `<Dial>`): Twilio leaves the `<Connect><Stream>`,
        which closes the gateway's socket, and runs the new TwiML."""
        if not call.twilio_call_sid:
            raise TelephonyError("the call has no Twilio call SID yet")
        sid = call.twilio_call_sid
        await asyncio.to_thread(_twilio_errors, lambda: self._client.calls(sid).update(twiml=twiml))

    async def hangup(self, call: Call) -> None:
        if not call.twilio_call_sid:
            raise TelephonyError("the call has no Twilio call SID yet")
        sid = call.twilio_call_sid
        await asyncio.to_thread(_twilio_errors, lambda: self._client.calls(sid).update(status="completed"))

    async def close(self) -> None:
        return None


def _twilio_errors(fn: Any) -> Any:
    try:
        return fn()
    except TwilioRestException as exc:
        raise TelephonyError(exc.msg or str(exc), code=exc.code, http_status=exc.status) from exc
    except OSError as exc:  # connection refused, DNS, TLS
        raise TelephonyError(f"could not reach Twilio: {exc}") from exc
