"""The pacer: frames go out ahead of the far end's play clock, and a stall inside a reply is measured."""

from __future__ import annotations

import asyncio
import base64
import json
import time

from voice_gateway.playback import FRAME_S, LEAD_FRAMES, Player

FRAME = b"\xff" * 160


async def _until(condition, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_frames_are_paced_in_real_time_with_a_small_lead() -> None:
    sent: list[tuple[float, str]] = []

    async def send(text: str) -> None:
        sent.append((time.monotonic(), json.loads(text)["event"]))

    player = Player(send, "MZ1")
    task = asyncio.create_task(player.run())
    player.push([FRAME] * 30, tag=(1, 0))
    player.push_mark("1:0")
    await _until(lambda: len(sent) == 31)
    task.cancel()
    media = [t for t, event in sent if event == "media"]
    # 30 frames = 600 ms of audio, sent LEAD_FRAMES ahead: the last leaves about 600 - 20 - lead ms after the first.
    span = media[-1] - media[0]
    assert (30 - 1 - LEAD_FRAMES) * FRAME_S - 0.03 <= span <= 30 * FRAME_S + 0.05
    assert sent[-1][1] == "mark" and player.busy  # the mark is out, not yet echoed
    assert player.acknowledge("1:0") and not player.busy
    assert player.lateness_by_reply == {}


async def test_a_stall_inside_a_reply_is_measured_but_a_new_reply_is_not() -> None:
    async def send(text: str) -> None:
        return None

    player = Player(send, "MZ1")
    task = asyncio.create_task(player.run())
    player.push([FRAME] * 3, tag=(1, 0))
    await _until(lambda: player.frames_sent == 3)
    await asyncio.sleep(0.3)  # the next clause's audio comes 300 ms late: the line runs dry
    player.push([FRAME] * 3, tag=(1, 1))
    await _until(lambda: player.frames_sent == 6)
    await asyncio.sleep(0.3)  # silence between replies is a turn, not a stall
    player.push([FRAME] * 3, tag=(2, 0))
    await _until(lambda: player.frames_sent == 9)
    task.cancel()
    assert player.lateness_by_reply[1] >= 0.3 - 3 * FRAME_S - 0.01
    assert 2 not in player.lateness_by_reply


async def test_clear_drops_queued_audio_and_reports_unplayed_marks() -> None:
    messages: list[str] = []

    async def send(text: str) -> None:
        messages.append(json.loads(text)["event"])

    player = Player(send, "MZ1")
    player.push([FRAME] * 50, tag=(1, 0))
    player.push_mark("1:0")
    dropped = await player.clear()
    assert dropped == ["1:0"] and messages == ["clear"] and not player.busy


async def test_no_frame_follows_a_clear() -> None:
    events: list[str] = []

    async def send(text: str) -> None:
        events.append(json.loads(text)["event"])

    player = Player(send, "MZ1")
    task = asyncio.create_task(player.run())
    player.push([FRAME] * 40, tag=(1, 0))  # 800 ms: the pacer waits for each frame's slot
    await _until(lambda: player.frames_sent >= LEAD_FRAMES + 2)
    await player.clear()  # barge-in while the pacer sleeps on a popped frame
    player.push([FRAME] * 2, tag=(2, 0))  # the next reply
    await _until(lambda: player.frames_sent >= LEAD_FRAMES + 4 or events.count("media") >= LEAD_FRAMES + 4)
    task.cancel()
    after = events[events.index("clear") + 1:]
    # Only the next reply's two frames follow the clear, never a frame of the reply it cut.
    assert after == ["media", "media"], events
    assert player.sent_by_tag.get((2, 0)) == 2


async def test_a_pause_takes_back_what_was_not_played_and_resume_plays_it_from_there() -> None:
    wire: list[tuple[str, object]] = []  # ("media", frame number) | ("mark", name) | ("clear", None)

    async def send(text: str) -> None:
        message = json.loads(text)
        event = message["event"]
        if event == "media":
            wire.append(("media", base64.b64decode(message["media"]["payload"])[0]))
        elif event == "mark":
            wire.append(("mark", message["mark"]["name"]))
        else:
            wire.append((event, None))

    player = Player(send, "MZ1")
    task = asyncio.create_task(player.run())
    frames = [bytes([i]) * 160 for i in range(60)]  # 1.2 s, each frame numbered by its bytes
    player.push(frames[:30], tag=(1, 0))
    player.push_mark("1:0")
    player.push(frames[30:], tag=(1, 1))
    player.push_mark("1:1")
    await _until(lambda: ("mark", "1:0") in wire)  # sent ahead of the audio before it, by the lead
    await player.pause()
    assert player.sent_by_tag.get((1, 1), 0) == 0  # what went out of the second clause was all taken back
    played = player.sent_by_tag[(1, 0)]
    sent_before = [n for kind, n in wire if kind == "media"]
    assert wire[-1] == ("clear", None) and player.paused
    assert sent_before[:played] == list(range(played))
    assert 1 <= len(sent_before) - played <= LEAD_FRAMES + 1  # the lead was taken back, not lost
    assert player.played_frames((1, 0)) == played
    frozen = len(wire)
    await asyncio.sleep(0.1)  # paused: nothing goes out (a real wait: the pacer runs on real time)
    assert len(wire) == frozen

    player.resume()
    await _until(lambda: sum(1 for kind, _ in wire[frozen:] if kind == "media") == 60 - played)
    await _until(lambda: sum(1 for kind, _ in wire[frozen:] if kind == "mark") == 2)
    task.cancel()
    after = wire[frozen:]
    # Every frame is heard once, in order: those played before the pause, then the rest from there.
    assert sent_before[:played] + [n for kind, n in after if kind == "media"] == list(range(60))
    marks = [name for kind, name in after if kind == "mark"]
    assert isinstance(marks[0], str) and marks[0] != "1:0" and marks[0].startswith("1:0")  # re-sent, renamed
    assert player.acknowledge("1:0") is None  # an echo of the mark sent before the pause does not count
    assert player.acknowledge(marks[0]) == "1:0" and player.acknowledge("1:1") == "1:1"
    assert player.lateness_by_reply == {}  # the pause is not a stall
