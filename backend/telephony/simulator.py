"""The simulated phone line (TELEPHONY_PROVIDER=simulator): Twilio's side of a call, run locally.

Dialing starts a `SimulatedCall` that treats our services exactly as Twilio does: signed status
callbacks (initiated → ringing → in-progress → completed), a signed POST for the TwiML, the
`<Connect><Stream>` it names opened with the virtual phone, and the callee's script spoken into it.
Only the phone network is simulated; the backend and gateway run their real code paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import wave
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import numpy as np

from backend.telephony.base import PlacedCall, TelephonyError, status_url, voice_url
from backend.telephony.caller_voice import synthesize_caller
from backend.telephony.virtual_phone import CallerLine, VirtualPhone
from shared import stream_tokens, twilio_auth
from shared.audio import int16_to_float32, phone_line
from shared.settings import Settings
from shared.storage.base import Agent, Call

log = logging.getLogger(__name__)

DEFAULT_SCRIPT = [
    {"text": "Hi, yes, this is Sam speaking."},
    {"text": "I would like to book a cleaning for next Tuesday morning."},
    {"text": "Perfect, thank you so much, goodbye!"},
]
SIM_ACCOUNT_SID = "AC" + "5" * 32


class SimulatorTelephony:
    """Places calls on the virtual phone line; each call runs as a task of this process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def place_call(self, call: Call, agent: Agent) -> PlacedCall:
        script = parse_script(call.metadata.get("simulate"))
        sid = "CA" + secrets.token_hex(16)
        simulated = SimulatedCall(self._settings, call, sid, script)
        task = asyncio.create_task(simulated.run(), name=f"simulated-call-{call.id}")
        self._tasks[call.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(call.id, None))
        return PlacedCall(sid=sid, status="queued")

    async def hangup(self, call: Call) -> None:
        task = self._tasks.get(call.id)
        if task is None:
            raise TelephonyError("the simulated call is not running")
        task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def parse_script(raw: Any) -> list[dict[str, Any]]:
    """A script is a list of lines: text strings or {text | wav, barge_in_after_ms}; None = the demo."""
    if raw is None:
        return DEFAULT_SCRIPT
    if isinstance(raw, dict):
        raw = raw.get("lines")
    if not isinstance(raw, list) or not raw:
        raise TelephonyError("metadata.simulate must be a non-empty list of lines")
    lines = []
    for item in raw:
        line = {"text": item} if isinstance(item, str) else item
        if not isinstance(line, dict) or not (line.get("text") or line.get("wav")):
            raise TelephonyError(f"bad simulated line {item!r}: give text or wav")
        if line.get("wav") is not None:
            # The backend reads this path on its own disk: only WAV recordings, never any other file.
            wav = Path(str(line["wav"]))
            if wav.suffix.lower() != ".wav" or not wav.is_file():
                raise TelephonyError(f"bad simulated line {item!r}: wav must name an existing .wav file")
        lines.append(line)
    return lines


async def caller_line(spec: dict[str, Any]) -> CallerLine:
    """Turn one script line into phone audio: a WAV file, or text spoken by the caller's voice."""
    if spec.get("wav"):
        with wave.open(str(spec["wav"])) as reader:
            rate = reader.getframerate()
            samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)
            if reader.getnchannels() > 1:
                samples = samples.reshape(-1, reader.getnchannels())[:, 0]
        audio = phone_line(int16_to_float32(samples), rate)
        text = str(spec.get("text") or spec["wav"])
    else:
        text = str(spec["text"])
        audio = await synthesize_caller(text)
    return CallerLine(text=text, audio=audio, barge_in_after_ms=spec.get("barge_in_after_ms"))


class SimulatedCall:
    """One call on the virtual line, from dialing to hang-up."""

    def __init__(self, settings: Settings, call: Call, sid: str, script: list[dict[str, Any]]) -> None:
        self.settings = settings
        self.call = call
        self.sid = sid
        self.script = script
        self._sequence = 0
        self._answered_at: float | None = None

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            try:
                await self._status(client, "initiated")
                await self._status(client, "ringing")
                lines = [await caller_line(spec) for spec in self.script]
                stream_url, parameters = await self._fetch_twiml(client)
                self._answered_at = time.monotonic()
                await self._status(client, "in-progress")
                # Twilio would sign the upgrade; the simulated line brings a token bound to this call.
                secret = twilio_auth.signing_token(self.settings)
                phone = VirtualPhone(
                    stream_tokens.stream_url(stream_url, secret, self.call.id), custom_parameters=parameters,
                    lines=lines, call_sid=self.sid, account_sid=SIM_ACCOUNT_SID,
                )
                await phone.run()
                await self._status(client, "completed")
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._status(client, "completed"))
                raise
            except Exception as exc:
                log.exception("simulated call %s failed", self.call.id)
                with contextlib.suppress(Exception):
                    await self._status(client, "failed", error=str(exc))

    def _signed(self, path: str, params: dict[str, str]) -> tuple[str, dict[str, str]]:
        """Where to POST (the backend, reached locally) and the signature Twilio would send."""
        public = self.settings.public_base_url + path
        token = twilio_auth.signing_token(self.settings)
        return self.settings.backend_url + path, {"X-Twilio-Signature": twilio_auth.sign(token, public, params)}

    def _base_params(self, status: str) -> dict[str, str]:
        return {
            "AccountSid": SIM_ACCOUNT_SID, "CallSid": self.sid, "CallStatus": status,
            "To": self.call.to_number, "From": self.call.from_number or "+15005550006",
            "Direction": "outbound-api", "ApiVersion": "2010-04-01",
        }

    async def _status(self, client: httpx.AsyncClient, status: str, *, error: str | None = None) -> None:
        params = self._base_params(status)
        params["SequenceNumber"] = str(self._sequence)
        params["Timestamp"] = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        self._sequence += 1
        if status == "completed" and self._answered_at is not None:
            params["CallDuration"] = str(round(time.monotonic() - self._answered_at))
        if error:
            params["ErrorMessage"] = error[:200]
        url, headers = self._signed(status_url("", self.call.id), params)
        response = await client.post(url, data=params, headers=headers)
        if response.status_code >= 400:
            log.warning("status callback %s answered %s: %s", status, response.status_code, response.text)

    async def _fetch_twiml(self, client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
        params = self._base_params("in-progress")
        url, headers = self._signed(voice_url("", self.call.id), params)
        response = await client.post(url, data=params, headers=headers)
        response.raise_for_status()
        stream = ElementTree.fromstring(response.text).find("./Connect/Stream")
        if stream is None or not stream.get("url"):
            raise TelephonyError("the TwiML has no <Connect><Stream url=…>")
        parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("./Parameter")}
        return str(stream.get("url")), parameters
