"""Simulated inbound calls (TELEPHONY_PROVIDER=simulator): a caller on the virtual line dials a number.

Twilio's side of an incoming call, run locally, as `backend.telephony.simulator` runs an outbound one:
the signed incoming-call webhook (`POST /twilio/inbound`, CallStatus `ringing`, Direction `inbound`),
then the `<Connect><Stream>` its TwiML names opened with the virtual phone speaking the caller's script,
then the number's signed status callback (`POST /twilio/inbound/status`) when the call ends. A
`<Reject>` answer ends it there, as Twilio would. Only the phone network is simulated: the backend
looks the number up, writes the call row and chooses the agent on its real code paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

import httpx

from backend.telephony.base import TelephonyError
from backend.telephony.simulator import SIM_ACCOUNT_SID, caller_line
from backend.telephony.virtual_phone import VirtualPhone
from shared import stream_tokens, twilio_auth
from shared.settings import Settings

log = logging.getLogger(__name__)

INBOUND_PATH = "/twilio/inbound"
INBOUND_STATUS_PATH = "/twilio/inbound/status"
WEBHOOK_TIMEOUT_S = 15.0  # Twilio waits 15 s for a voice webhook before it gives up on the call


class CallRejected(TelephonyError):
    """The backend answered the incoming call with `<Reject>` (number not configured, inbound off, busy)."""


@dataclass(frozen=True)
class AnsweredCall:
    """What the incoming-call webhook answered: the call row it wrote and the stream to open."""

    call_id: str
    twilio_call_sid: str
    to_number: str
    from_number: str
    stream_url: str
    parameters: dict[str, str]


class InboundSimulator:
    """Rings configured numbers from the virtual line; each answered call runs as a task of this process.

    `transport` replaces the network between the line and the backend (tests pass the app's ASGI
    transport); by default the line reaches the backend at `settings.backend_url`, as Twilio would.
    """

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._settings = settings
        self._transport = transport
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def dial(
        self, *, to_number: str, from_number: str, script: list[dict[str, Any]]
    ) -> AnsweredCall:
        """Ring `to_number`; once the backend has answered, the conversation goes on in the background.

        Raises `CallRejected` for a `<Reject>`, `TelephonyError` when the backend's answer is not TwiML
        that connects a stream (or it does not answer).
        """
        call = SimulatedInboundCall(self._settings, self._transport, to_number, from_number, script)
        answered = await call.ring()
        task = asyncio.create_task(call.converse(answered), name=f"simulated-inbound-{answered.call_id}")
        self._tasks[answered.call_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(answered.call_id, None))
        return answered

    async def hangup(self, call_id: str) -> None:
        """The caller hangs up (the task posts the call's end on its way out)."""
        task = self._tasks.get(call_id)
        if task is None:
            raise TelephonyError("the simulated inbound call is not running")
        task.cancel()

    async def join(self) -> None:
        """Wait for every running call to end by itself (tests; the script's end hangs up)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def aclose(self) -> None:
        """Hang up every running call and wait for each to post its end."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class SimulatedInboundCall:
    """One incoming call on the virtual line, from the first ring to hang-up."""

    def __init__(
        self, settings: Settings, transport: httpx.AsyncBaseTransport | None, to_number: str, from_number: str,
        script: list[dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.to_number = to_number
        self.from_number = from_number
        self.script = script
        self.sid = "CA" + secrets.token_hex(16)
        self._answered_at: float | None = None

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, transport=self.transport)

    async def ring(self) -> AnsweredCall:
        """Post the incoming-call webhook and read its TwiML: a stream to open, or a rejection."""
        try:
            async with self._client() as client:
                response = await self._post(client, INBOUND_PATH, self._params("ringing"))
        except httpx.HTTPError as exc:
            raise TelephonyError(f"the backend did not answer the incoming-call webhook: {exc!r}") from exc
        if response.status_code != 200:
            raise TelephonyError(f"the incoming-call webhook answered {response.status_code}: {response.text[:200]}")
        try:
            root = ElementTree.fromstring(response.text)
        except ElementTree.ParseError as exc:
            raise TelephonyError(f"the incoming-call webhook answered no TwiML: {exc}") from None
        reject = root.find("./Reject")
        if reject is not None:
            raise CallRejected(f"the number rejected the call ({reject.get('reason', 'rejected')})")
        stream = root.find("./Connect/Stream")
        if stream is None or not stream.get("url"):
            raise TelephonyError("the TwiML has no <Connect><Stream url=…>")
        parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("./Parameter")}
        if not parameters.get("call_id"):
            raise TelephonyError("the TwiML's <Stream> has no call_id parameter")
        return AnsweredCall(
            call_id=parameters["call_id"], twilio_call_sid=self.sid, to_number=self.to_number,
            from_number=self.from_number, stream_url=str(stream.get("url")), parameters=parameters,
        )

    async def converse(self, answered: AnsweredCall) -> None:
        """Speak the script into the stream, then post the call's end (`failed` with the reason if the
        line could not be set up)."""
        async with self._client() as client:
            try:
                lines = [await caller_line(spec) for spec in self.script]
                self._answered_at = time.monotonic()
                # Twilio would sign the upgrade; the simulated line brings a token bound to this call.
                secret = twilio_auth.signing_token(self.settings)
                phone = VirtualPhone(
                    stream_tokens.stream_url(answered.stream_url, secret, answered.call_id),
                    custom_parameters=answered.parameters, lines=lines, call_sid=self.sid,
                    account_sid=SIM_ACCOUNT_SID,
                )
                await phone.run()
                await self._status(client, "completed")
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._status(client, "completed"))
                raise
            except Exception as exc:
                log.exception("simulated inbound call %s failed", answered.call_id)
                with contextlib.suppress(Exception):
                    await self._status(client, "failed", error=str(exc))

    def _params(self, status: str) -> dict[str, str]:
        """The fields Twilio posts for an incoming call."""
        return {
            "AccountSid": SIM_ACCOUNT_SID, "CallSid": self.sid, "CallStatus": status, "To": self.to_number,
            "Called": self.to_number, "From": self.from_number, "Caller": self.from_number,
            "Direction": "inbound", "ApiVersion": "2010-04-01",
        }

    async def _post(self, client: httpx.AsyncClient, path: str, params: dict[str, str]) -> httpx.Response:
        """POST to the backend (reached locally) with the signature Twilio would send for the public URL."""
        token = twilio_auth.signing_token(self.settings)
        signature = twilio_auth.sign(token, self.settings.public_base_url + path, params)
        return await client.post(self.settings.backend_url + path, data=params, headers={"X-Twilio-Signature": signature})

    async def _status(self, client: httpx.AsyncClient, status: str, *, error: str | None = None) -> None:
        params = self._params(status)
        params["Timestamp"] = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        if status == "completed" and self._answered_at is not None:
            params["CallDuration"] = str(round(time.monotonic() - self._answered_at))
        if error:
            params["ErrorMessage"] = error[:200]
        response = await self._post(client, INBOUND_STATUS_PATH, params)
        if response.status_code >= 400:
            log.warning("inbound status callback %s answered %s: %s", status, response.status_code, response.text)
