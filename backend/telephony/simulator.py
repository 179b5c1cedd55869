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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.telephony.base import PlacedCall, TelephonyError, status_url, voice_url
from backend.telephony.caller_voice import synthesize_caller
from backend.telephony.virtual_phone import Beep, CallerLine, KeyPresses, ScriptLine, Silence, VirtualPhone
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
UNANSWERED = ("busy", "no-answer", "failed")
"""What a simulated callee can do instead of answering: `"busy"` (or `{"result": "busy"}`) as the script."""
RING_S = 0.3
"""How long an unanswered simulated call rings before its final status (real ones ring for seconds)."""
DTMF_KEYS = r"^[0-9*#A-D]{1,64}$"


class SimulatorTelephony:
    """Places calls on the virtual phone line; each call runs as a task of this process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def place_call(self, call: Call, agent: Agent) -> PlacedCall:
        raw = call.metadata.get("simulate")
        script = parse_script(raw)
        sid = "CA" + secrets.token_hex(16)
        simulated = SimulatedCall(self._settings, call, sid, script, result=unanswered(raw))
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


class _Line(BaseModel):
    """A script line's keys, as named in the JSON; its fields are named as the phone's line types
    (`virtual_phone.CallerLine`, `Beep`, …), so the fields a line sets are that type's keyword
    arguments, and the defaults are that type's. Any other key is a mistake worth a clear error."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _SpeechLine(_Line):
    text: str | None = None
    wav: str | None = None
    barge_in_after_ms: int | None = Field(default=None, ge=0, le=60_000)
    speak_first: bool = CallerLine.speak_first
    expect_dtmf: str | None = Field(default=None, pattern=DTMF_KEYS)
    dtmf_timeout_s: float | None = Field(default=None, gt=0, le=600, alias="timeout_s")


class _BeepLine(_Line):
    beep: bool = True
    hz: float = Field(default=Beep.hz, ge=300, le=3400, alias="beep_hz")
    ms: int = Field(default=Beep.ms, ge=100, le=5000, alias="beep_ms")
    record_s: float = Field(default=Beep.record_s, gt=0, le=600)


class _KeysLine(_Line):
    digits: str = Field(pattern=DTMF_KEYS, alias="dtmf")
    gap_ms: int = Field(default=KeyPresses.gap_ms, ge=100, le=5000)
    tones: bool = KeyPresses.tones
    speak_first: bool = KeyPresses.speak_first


class _SilenceLine(_Line):
    seconds: float = Field(gt=0, le=600, alias="silence_s")


_KINDS: tuple[tuple[tuple[str, ...], type[_Line]], ...] = (
    (("text", "wav"), _SpeechLine),
    (("beep", "beep_hz"), _BeepLine),
    (("dtmf",), _KeysLine),
    (("silence_s",), _SilenceLine),
)
"""A line's kind is told by the keys it has; one line, one kind."""


def unanswered(raw: Any) -> str | None:
    """The final status of a callee who does not answer (`"busy"`, `{"result": "no-answer"}`), or None."""
    result = raw if isinstance(raw, str) else raw.get("result") if isinstance(raw, dict) else None
    return result if result in UNANSWERED else None


def parse_script(raw: Any) -> list[dict[str, Any]]:
    """A script is a list of lines; None = the demo; "busy", "no-answer" or "failed" (or {"result": ...})
    = a callee who never answers (no lines). A line is one of:

    - text, or {text | wav, barge_in_after_ms?, speak_first?, expect_dtmf?, timeout_s?}: said by the
      callee (expect_dtmf: an IVR prompt that then listens for the agent's keys);
    - {beep: true | beep_hz, beep_ms?, record_s?}: an answering machine's beep, then it records;
    - {dtmf: "1234#", gap_ms?, tones?, speak_first?}: keys the callee types (Media Streams dtmf events);
    - {silence_s}: the callee says nothing for that long.
    """
    if raw is None:
        return DEFAULT_SCRIPT
    if unanswered(raw) is not None:
        return []
    if isinstance(raw, dict):
        if "result" in raw:
            raise TelephonyError(f"metadata.simulate.result must be one of {', '.join(UNANSWERED)}")
        raw = raw.get("lines")
    if isinstance(raw, str):
        raw = [raw]  # one line said by the callee
    if not isinstance(raw, list) or not raw:
        raise TelephonyError("metadata.simulate must be a non-empty list of lines")
    return [_parse_line(item) for item in raw]


def _kind(item: Any) -> type[_Line]:
    """Which kind of line `item` is (by its keys), or a TelephonyError saying what a line may be."""
    kinds = [model for keys, model in _KINDS if isinstance(item, dict) and any(k in item for k in keys)]
    if len(kinds) != 1 or (kinds[0] is _SpeechLine and not (item.get("text") or item.get("wav"))):
        raise TelephonyError(f"bad simulated line {item!r}: give text or wav, or one of "
                             "beep (or beep_hz), dtmf, silence_s")
    return kinds[0]


def _parse_line(item: Any) -> dict[str, Any]:
    line = {"text": item} if isinstance(item, str) else item
    kind = _kind(line)
    try:
        parsed = kind.model_validate(line)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "line"
        raise TelephonyError(f"bad simulated line {item!r}: {where}: {first['msg']}") from None
    if isinstance(parsed, _SpeechLine):
        if parsed.wav is not None:
            # The backend reads this path on its own disk: only WAV recordings, never any other file.
            wav = Path(parsed.wav)
            if wav.suffix.lower() != ".wav" or not wav.is_file():
                raise TelephonyError(f"bad simulated line {item!r}: wav must name an existing .wav file")
        if parsed.dtmf_timeout_s is not None and parsed.expect_dtmf is None:
            raise TelephonyError(f"bad simulated line {item!r}: timeout_s is how long expect_dtmf waits")
        if parsed.speak_first and parsed.barge_in_after_ms is not None:
            raise TelephonyError(f"bad simulated line {item!r}: speak_first or barge_in_after_ms, not both")
    if isinstance(parsed, _BeepLine) and not parsed.beep:
        raise TelephonyError(f"bad simulated line {item!r}: beep must be true (or give beep_hz)")
    return parsed.model_dump(by_alias=True, exclude_unset=True)


async def caller_line(spec: dict[str, Any]) -> ScriptLine:
    """Turn one parsed script line into what the phone plays: a WAV file or text spoken by the
    caller's voice, a beep, keys or silence."""
    parsed = _kind(spec).model_validate(spec)
    given = parsed.model_dump(exclude_unset=True)
    if isinstance(parsed, _SilenceLine):
        return Silence(**given)
    if isinstance(parsed, _KeysLine):
        return KeyPresses(**given)
    if isinstance(parsed, _BeepLine):
        given.pop("beep", None)
        return Beep(**given)
    assert isinstance(parsed, _SpeechLine)
    given.pop("text", None)
    given.pop("wav", None)
    if parsed.wav:
        with wave.open(parsed.wav) as reader:
            rate = reader.getframerate()
            samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)
            if reader.getnchannels() > 1:
                samples = samples.reshape(-1, reader.getnchannels())[:, 0]
        audio = phone_line(int16_to_float32(samples), rate)
        text = parsed.text or parsed.wav
    else:
        text = str(parsed.text)
        audio = await synthesize_caller(text)
    return CallerLine(text=text, audio=audio, **given)


class SimulatedCall:
    """One call on the virtual line, from dialing to hang-up."""

    def __init__(
        self, settings: Settings, call: Call, sid: str, script: list[dict[str, Any]], *, result: str | None = None
    ) -> None:
        self.settings = settings
        self.call = call
        self.sid = sid
        self.script = script
        self.result = result
        self._sequence = 0
        self._answered_at: float | None = None

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            try:
                await self._status(client, "initiated")
                await self._status(client, "ringing")
                if self.result is not None:  # the callee never answers
                    await asyncio.sleep(RING_S)  # the ringing the simulated callee lets go by
                    await self._status(client, self.result)
                    return
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
