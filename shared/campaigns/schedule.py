"""When a calling window is open, and when it next opens: pure functions of a window, a zone and a time.

Local times are read in the contact's zone (else the campaign's), so a campaign across time zones calls
each person within their own working hours. Daylight-saving gaps are handled by `zoneinfo`: a window
that starts at a local time skipped by the clock change opens at the first instant after it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from shared.campaigns.config import DAYS, Window


def is_open(window: Window | None, tz: str, at: datetime) -> bool:
    """Whether a call may be placed at `at` (aware) for someone in `tz`; no window is always open."""
    if window is None:
        return True
    local = at.astimezone(ZoneInfo(tz))
    return DAYS[local.weekday()] in window.days and window.opens <= local.time() < window.closes


def next_open(window: Window | None, tz: str, at: datetime) -> datetime:
    """The first instant at or after `at` when the window is open (UTC); `at` itself when it is open."""
    if is_open(window, tz, at) or window is None:
        return at
    zone = ZoneInfo(tz)
    local = at.astimezone(zone)
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        if DAYS[day.weekday()] not in window.days:
            continue
        opening = datetime.combine(day, window.opens, tzinfo=zone)
        # Round-trip through UTC: a wall time inside a spring-forward gap becomes a real instant.
        opening = opening.astimezone(UTC).astimezone(zone)
        if opening > local:  # today's opening already passed means today's window has closed too
            return opening.astimezone(UTC)
    raise ValueError("the window has no open day")  # Window requires at least one day
