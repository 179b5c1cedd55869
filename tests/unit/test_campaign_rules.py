"""The campaign rules that need no database: calling windows across zones and clock changes, what an
attempt's result does to its contact, CSV contacts named by row, and prompt placeholders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared.campaigns.config import CampaignSettings, ContactIn, RetryRules, Window
from shared.campaigns.csv_import import CsvRejected, parse_contacts
from shared.campaigns.outcomes import call_result, decide
from shared.campaigns.schedule import is_open, next_open
from shared.storage.base import Call
from voice_gateway.prompts import fill_placeholders

WEEKDAYS = Window(days=["mon", "tue", "wed", "thu", "fri"], start="09:00", end="17:00")


def test_the_window_is_read_in_the_contacts_own_zone() -> None:
    monday_15_utc = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)  # 10:00 in New York, 00:00 Tuesday in Tokyo
    assert is_open(WEEKDAYS, "America/New_York", monday_15_utc)
    assert not is_open(WEEKDAYS, "Asia/Tokyo", monday_15_utc)
    assert next_open(WEEKDAYS, "Asia/Tokyo", monday_15_utc) == datetime(
        2026, 12, 1, 0, 0, tzinfo=UTC
    )  # 09:00 JST
    assert is_open(None, "UTC", monday_15_utc) and next_open(None, "UTC", monday_15_utc) == monday_15_utc


def test_a_closed_window_opens_on_the_next_allowed_day_and_a_clock_change_is_honoured() -> None:
    friday_evening = datetime(2026, 12, 4, 23, 0, tzinfo=UTC)  # 18:00 in New York: closed until Monday 09:00
    assert next_open(WEEKDAYS, "America/New_York", friday_evening) == datetime(2026, 12, 7, 14, 0, tzinfo=UTC)
    # Europe/Berlin springs forward on 2027-03-28 at 02:00: a 02:30 opening falls in the gap.
    early = Window(days=["sun"], start="02:30", end="04:00")
    opened = next_open(early, "Europe/Berlin", datetime(2027, 3, 27, 12, 0, tzinfo=UTC))
    assert opened.date().isoformat() == "2027-03-28" and is_open(early, "Europe/Berlin", opened)


@pytest.mark.parametrize(
    "bad", [{"start": "17:00", "end": "09:00"}, {"start": "9am"}, {"days": []}, {"days": ["someday"]}]
)
def test_a_window_that_can_never_open_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Window.model_validate(bad)


def _call(status: str, answered_by: str | None = None) -> Call:
    now = datetime.now(UTC)
    return Call(
        id="c",
        agent_id="a",
        to_number="+14155550100",
        status=status,
        created_at=now,
        updated_at=now,
        answered_by=answered_by,
    )


def test_what_the_phone_network_says_becomes_the_attempts_result() -> None:
    assert [
        call_result(_call(s)) for s in ("busy", "no-answer", "failed", "canceled", "completed", "ringing")
    ] == ["busy", "no-answer", "failed", "failed", "answered", None]
    assert call_result(_call("completed", "machine_end_beep")) == "voicemail"
    assert call_result(_call("completed", "human")) == "answered"


def test_retries_follow_the_rules_and_stop_at_max_attempts_or_a_cancelled_campaign() -> None:
    rules = RetryRules(max_attempts=3, delay_s=600, on=["busy", "voicemail", "callback_requested"])
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    retry = decide("busy", attempts=1, rules=rules, now=now, active=True)
    assert (retry.status, retry.next_attempt_at) == ("pending", now + timedelta(seconds=600))
    assert decide("busy", attempts=3, rules=rules, now=now, active=True).status == "failed"
    assert (
        decide("no-answer", attempts=1, rules=rules, now=now, active=True).status == "failed"
    )  # not in `on`
    assert decide("busy", attempts=1, rules=rules, now=now, active=False).status == "failed"
    assert decide("voicemail", attempts=3, rules=rules, now=now, active=True).status == "completed"  # reached
    assert decide("callback_requested", attempts=1, rules=rules, now=now, active=True).status == "pending"
    assert decide("goal_achieved", attempts=1, rules=rules, now=now, active=True).status == "completed"
    assert (
        decide("do_not_call", attempts=1, rules=RetryRules(on=["do_not_call"]), now=now, active=True).status
        == "completed"
    )  # never retried, whatever the rules say


def test_retry_rules_name_results_or_outcomes_only() -> None:
    with pytest.raises(ValidationError, match="neither a call result"):
        RetryRules(on=["Busy Signal"])


def test_csv_contacts_keep_their_variables_and_every_bad_row_is_named() -> None:
    good = parse_contacts(
        "\ufeffphone_number,first_name,timezone\n+1 415 555 0101,Ann,Europe/Berlin\n\n"
        "+14155550102,Bo,\n".encode()
    )
    assert [(c.phone_number, c.timezone, c.variables) for c in good] == [
        ("+14155550101", "Europe/Berlin", {"first_name": "Ann"}),
        ("+14155550102", None, {"first_name": "Bo"}),
    ]
    bad = (
        "phone_number,first_name,timezone\n+14155550101,Ann,Mars/Olympus\nabc,Bo,\n"
        "+14155550103,Cy\n+14155550104,Di,\n+1 415 555 0104,Ed,\n"
    )
    with pytest.raises(CsvRejected) as rejected:
        parse_contacts(bad.encode())
    assert [(e.row, e.column) for e in rejected.value.errors] == [
        (2, "timezone"),
        (3, "phone_number"),
        (4, None),
        (6, "phone_number"),
    ]
    assert "already in row 5" in rejected.value.errors[3].message
    assert (
        "Mars/Olympus" in rejected.value.errors[0].message and "row 2" not in rejected.value.errors[0].message
    )


@pytest.mark.parametrize(
    ("data", "row", "words"),
    [
        (b"", 0, "empty"),
        (b"\xff\xfe", 0, "UTF-8"),
        (b"name\nAnn\n", 1, "phone_number"),
        (b"phone_number,first name\n+14155550101,Ann\n", 1, "letters, digits"),
        (b"phone_number\n", 0, "no contacts"),
        (b"phone_number,a,a\n+14155550101,1,2\n", 1, "twice"),
    ],
)
def test_an_unusable_file_is_refused_with_the_reason(data: bytes, row: int, words: str) -> None:
    with pytest.raises(CsvRejected) as rejected:
        parse_contacts(data)
    assert rejected.value.errors[0].row == row and words in rejected.value.errors[0].message


def test_campaign_settings_refuse_unknown_zones_and_loose_types() -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        CampaignSettings(name="x", agent_id="a", timezone="Mars/Olympus")
    with pytest.raises(ValidationError):
        CampaignSettings.model_validate({"name": "x", "agent_id": "a", "start": 0})
    with pytest.raises(ValidationError):
        ContactIn.model_validate({"phone_number": "+14155550101", "variables": {"n": "9" * 600}})


def test_placeholders_are_filled_from_the_contacts_variables_and_nothing_else_is_interpreted() -> None:
    variables = {"first_name": "Ann", "day": "Tuesday"}
    assert (
        fill_placeholders("Hi {first_name}, see you {day}. {unknown} {first_name.__class__} {0}", variables)
        == "Hi Ann, see you Tuesday. {unknown} {first_name.__class__} {0}"
    )
