"""Twilio Media Streams messages, parsed into typed models at the edge.

The rest of the gateway never sees raw JSON or base64: inbound text frames become one of the
event models below, outbound messages are built by the `*_message` functions.
Reference: Twilio's "Media Streams - WebSocket Messages" (bidirectional, `<Connect><Stream>`).
"""

from __future__ import annotations

import base64
import binascii
import json
from enum import IntEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class CloseCode(IntEnum):
    """WebSocket close codes the gateway ends a stream with (RFC 6455, section 7.4.1)."""

    NORMAL = 1000
    UNSUPPORTED_DATA = 1003
    """A binary frame: Media Streams messages are text."""
    INVALID_DATA = 1007
    """The frame is not valid Media Streams JSON."""
    POLICY_VIOLATION = 1008
    """Valid JSON the gateway refuses: out of order, for an unknown or ended call, or not authorised."""
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


class ProtocolError(Exception):
    """The stream broke the protocol; the socket is closed with `code` and this reason."""

    def __init__(self, reason: str, code: CloseCode = CloseCode.INVALID_DATA) -> None:
        super().__init__(reason)
        self.code = code


def policy_violation(reason: str) -> ProtocolError:
    """Well-formed, but refused (media before start, an unknown call, a token for another call)."""
    return ProtocolError(reason, CloseCode.POLICY_VIOLATION)


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class MediaFormat(_Message):
    encoding: str = "audio/x-mulaw"
    sample_rate: int = Field(default=8000, alias="sampleRate")
    channels: int = 1


class StartInfo(_Message):
    account_sid: str | None = Field(default=None, alias="accountSid")
    call_sid: str = Field(alias="callSid")
    stream_sid: str | None = Field(default=None, alias="streamSid")
    tracks: list[str] = Field(default_factory=lambda: ["inbound"])
    custom_parameters: dict[str, str] = Field(default_factory=dict, alias="customParameters")
    media_format: MediaFormat = Field(default_factory=MediaFormat, alias="mediaFormat")


class Connected(_Message):
    event: Literal["connected"]
    protocol: str | None = None
    version: str | None = None


class Start(_Message):
    event: Literal["start"]
    sequence_number: str | None = Field(default=None, alias="sequenceNumber")
    stream_sid: str = Field(alias="streamSid")
    start: StartInfo


class MediaPayload(_Message):
    track: str = "inbound"
    chunk: str | None = None
    timestamp: str | None = None
    payload: str

    def audio(self) -> bytes:
        """The raw μ-law bytes (any length: Twilio does not promise a chunk size)."""
        try:
            return base64.b64decode(self.payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"media payload is not base64: {exc}") from exc


class Media(_Message):
    event: Literal["media"]
    sequence_number: str | None = Field(default=None, alias="sequenceNumber")
    stream_sid: str | None = Field(default=None, alias="streamSid")
    media: MediaPayload


class MarkInfo(_Message):
    name: str


class Mark(_Message):
    event: Literal["mark"]
    stream_sid: str | None = Field(default=None, alias="streamSid")
    mark: MarkInfo


class DtmfInfo(_Message):
    track: str | None = None
    digit: str


class Dtmf(_Message):
    event: Literal["dtmf"]
    stream_sid: str | None = Field(default=None, alias="streamSid")
    dtmf: DtmfInfo


class Stop(_Message):
    event: Literal["stop"]
    stream_sid: str | None = Field(default=None, alias="streamSid")


InboundMessage = Annotated[Connected | Start | Media | Mark | Dtmf | Stop, Field(discriminator="event")]
_inbound: TypeAdapter[Connected | Start | Media | Mark | Dtmf | Stop] = TypeAdapter(InboundMessage)


def parse_message(text: str | bytes) -> Connected | Start | Media | Mark | Dtmf | Stop:
    """Parse one text frame from Twilio, or raise ProtocolError saying what is wrong."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc.msg if hasattr(exc, 'msg') else exc}") from None
    except RecursionError:  # json's parser recurses per level: thousands of nested brackets
        raise ProtocolError("not JSON: nested too deeply") from None
    if not isinstance(data, dict) or "event" not in data:
        raise ProtocolError("a Media Streams message is a JSON object with an `event`")
    try:
        return _inbound.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProtocolError(f"bad {data.get('event')!r} message: {where}: {first['msg']}") from None


def _dump(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def media_message(stream_sid: str, ulaw: bytes) -> str:
    """Audio to play: raw μ-law 8 kHz, base64, no WAV header."""
    return _dump({"event": "media", "streamSid": stream_sid, "media": {"payload": base64.b64encode(ulaw).decode()}})


def mark_message(stream_sid: str, name: str) -> str:
    """A mark Twilio echoes back once the audio sent before it has played."""
    return _dump({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    """Drop audio Twilio still holds buffered (barge-in)."""
    return _dump({"event": "clear", "streamSid": stream_sid})
