"""Twilio's Media Streams messages, parsed exactly as Twilio sends them."""

import base64
import json

import pytest

from voice_gateway.media_stream import (
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
    parse_message,
)

START = {
    "event": "start", "sequenceNumber": "1", "streamSid": "MZ123",
    "start": {"accountSid": "AC1", "streamSid": "MZ123", "callSid": "CA1", "tracks": ["inbound"],
              "customParameters": {"call_id": "abc"},
              "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
}


def test_start_carries_custom_parameters() -> None:
    message = parse_message(json.dumps(START))
    assert isinstance(message, Start)
    assert message.stream_sid == "MZ123" and message.start.custom_parameters == {"call_id": "abc"}
    assert message.start.media_format.sample_rate == 8000


def test_media_of_any_length_decodes() -> None:
    payload = base64.b64encode(b"\xff" * 37).decode()
    message = parse_message(json.dumps({"event": "media", "streamSid": "MZ", "media": {
        "track": "inbound", "chunk": "2", "timestamp": "40", "payload": payload}}))
    assert isinstance(message, Media) and message.media.audio() == b"\xff" * 37


def test_mark_dtmf_stop() -> None:
    assert isinstance(parse_message('{"event":"mark","streamSid":"MZ","mark":{"name":"1:0"}}'), Mark)
    assert parse_message('{"event":"dtmf","streamSid":"MZ","dtmf":{"track":"inbound_track","digit":"5"}}') \
        == Dtmf(event="dtmf", streamSid="MZ", dtmf={"track": "inbound_track", "digit": "5"})
    assert isinstance(parse_message('{"event":"stop","streamSid":"MZ","stop":{}}'), Stop)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"event": "teleport"}', "bad 'teleport' message"),
        ('{"event": "start", "streamSid": "MZ"}', "start"),
        ('{"event": "media", "media": {"payload": "%%%"}}', None),
    ],
)
def test_malformed_messages_name_the_problem(raw: str, reason: str | None) -> None:
    with pytest.raises(ProtocolError) as error:
        message = parse_message(raw)
        assert isinstance(message, Media)
        message.media.audio()
    if reason:
        assert reason in str(error.value)


def test_outbound_messages_are_twilios_shapes() -> None:
    sent = json.loads(media_message("MZ1", b"\x00\xff"))
    assert sent == {"event": "media", "streamSid": "MZ1", "media": {"payload": base64.b64encode(b"\x00\xff").decode()}}
    assert json.loads(mark_message("MZ1", "3:1")) == {"event": "mark", "streamSid": "MZ1", "mark": {"name": "3:1"}}
    assert json.loads(clear_message("MZ1")) == {"event": "clear", "streamSid": "MZ1"}
