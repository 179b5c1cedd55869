"""The call lifecycle rule every storage applies to status callbacks."""

from datetime import UTC, datetime

from shared import call_status

NOW = datetime(2026, 11, 24, tzinfo=UTC)
ROW = {"status": "ringing", "started_at": None, "ended_at": None, "duration": None, "twilio_call_sid": None}


def test_forward_event_sets_status_and_timestamps_once() -> None:
    assert call_status.transition(ROW, "in-progress", at=NOW) == {"status": "in-progress", "started_at": NOW}
    done = {**ROW, "status": "in-progress", "started_at": NOW}
    assert call_status.transition(done, "completed", at=NOW, duration=42) == {
        "status": "completed", "ended_at": NOW, "duration": 42}


def test_late_event_changes_no_status_but_fills_missing_facts() -> None:
    ended = {**ROW, "status": "completed", "ended_at": NOW}
    assert call_status.transition(ended, "ringing", at=NOW) == {}
    assert call_status.transition(ended, "ringing", at=NOW, twilio_call_sid="CA1", duration=7) == {
        "twilio_call_sid": "CA1", "duration": 7}


def test_twilio_spellings_normalise() -> None:
    assert call_status.normalize("Answered") == "in-progress"
    assert call_status.normalize("no_answer") == "no-answer"
    assert not call_status.should_apply("busy", "completed")
