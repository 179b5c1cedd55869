"""The campaign tables over the shared SQL (SQLite and PostgreSQL).

The one piece of concurrency that matters is `claim_due`: in one transaction it locks the campaign row
(`for update skip locked`: a second dispatcher skips a campaign another is serving instead of queueing
behind it), counts the contacts being called, takes due contacts (again `skip locked`), writes each
one's call row and marks it `calling`. Whatever happens after the commit, a contact is never claimed
twice: a dispatcher that dies before dialing leaves a `queued` call without a call SID, which the sweep
(`release_undialed`) turns back into a pending contact without counting the attempt. On SQLite the
transaction takes the database's write lock (`begin immediate`), which serialises dispatchers the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from shared.campaigns import outcomes, schedule
from shared.campaigns.config import CampaignSettings, ContactIn
from shared.campaigns.models import (
    CONTACT_STATUSES,
    Campaign,
    Claim,
    Contact,
    DoNotCall,
    Progress,
)
from shared.errors import ConfigurationError, NotFound
from shared.storage import rows
from shared.storage.base import Call, Storage, aware, new_id, utcnow
from shared.storage.sql import Executor, SQLStorage

SCAN_EXTRA = 50
"""Due contacts read beyond the ones a tick may dial: do-not-call and out-of-window rows are passed over."""


class CampaignStateError(ValueError):
    """A campaign cannot make this move from its status (resume a cancelled one, start twice)."""


_MOVES: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({"draft"}), "running"),
    "pause": (frozenset({"running"}), "paused"),
    "resume": (frozenset({"paused"}), "running"),
    "cancel": (frozenset({"draft", "running", "paused"}), "cancelled"),
}


def campaign_store(storage: Storage) -> CampaignStore:
    """The campaign tables of `storage`; campaigns need SQL (SQLite or PostgreSQL), not Supabase's REST."""
    if not isinstance(storage, SQLStorage):
        raise ConfigurationError(
            "campaigns need DATABASE_URL (SQLite or PostgreSQL); Supabase's REST API "
            "cannot lock rows for dispatch"
        )
    return CampaignStore(storage)


class CampaignStore:
    """Campaigns, their contacts and the do-not-call list, on an open `SQLStorage`."""

    def __init__(self, sql: SQLStorage) -> None:
        self.sql = sql

    @property
    def _skip_locked(self) -> str:
        return f"{self.sql.lock_clause} skip locked" if self.sql.lock_clause else ""

    def _id(self, value: str) -> Any:
        return self.sql._encode("id", value)

    def _t(self, value: datetime | None) -> Any:
        return self.sql._encode("updated_at", value)

    # --- campaigns ---------------------------------------------------------------------------------
    async def create(self, settings: CampaignSettings, contacts: list[ContactIn]) -> Campaign:
        """The campaign and all its contacts, in one transaction (nothing half-created)."""
        now = utcnow()
        values = {
            "id": new_id(),
            "name": settings.name,
            "agent_id": settings.agent_id,
            "from_number": settings.from_number,
            "status": "running" if settings.start else "draft",
            "max_concurrency": settings.max_concurrency,
            "calls_per_second": settings.calls_per_second,
            "schedule": settings.window.model_dump(mode="json") if settings.window else {},
            "timezone": settings.timezone,
            "retry": settings.retry.model_dump(mode="json"),
            "created_at": now,
            "updated_at": now,
            "started_at": now if settings.start else None,
        }
        sql, args = self.sql._insert("campaigns", values)
        async with self.sql._transaction() as conn:
            row = await self.sql._one(conn, sql, *args, what="campaign")
            for number, contact in enumerate(contacts, start=1):
                insert, insert_args = self.sql._insert(
                    "campaign_contacts",
                    {
                        "id": new_id(),
                        "campaign_id": values["id"],
                        "row_number": number,
                        "phone_number": contact.phone_number,
                        "timezone": contact.timezone,
                        "variables": contact.variables,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                        "updated_at": now,
                    },
                    tail="",
                )
                await conn.execute(insert, *insert_args)
        return Campaign.from_row(row)

    async def get(self, campaign_id: str, *, progress: bool = False) -> Campaign:
        async with self.sql._connection() as conn:
            row = await self.sql._one(
                conn,
                "select * from campaigns where id = ?",
                self._id(campaign_id),
                what=f"campaign {campaign_id}",
            )
            campaign = Campaign.from_row(row)
            if progress:
                campaign.progress = await self._progress(conn, campaign_id)
        return campaign

    async def list_campaigns(
        self, *, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[Campaign]:
        where, args = ("where status = ?", [status]) if status else ("", [])
        async with self.sql._connection() as conn:
            found = await conn.fetch(
                f"select * from campaigns {where} order by created_at desc, id limit ? offset ?",
                *args,
                limit,
                offset,
            )
            out = []
            for row in found:
                campaign = Campaign.from_row(self.sql._decode(row))
                campaign.progress = await self._progress(conn, campaign.id)
                out.append(campaign)
        return out

    async def _progress(self, conn: Executor, campaign_id: str) -> Progress:
        found = await conn.fetch(
            "select status, count(*) as n, sum(attempts) as attempts from campaign_contacts "
            "where campaign_id = ? group by status",
            self._id(campaign_id),
        )
        counts = {row["status"]: int(row["n"]) for row in found}
        placed = sum(int(row["attempts"] or 0) for row in found)
        return Progress(
            total=sum(counts.values()), calls_placed=placed, **{s: counts.get(s, 0) for s in CONTACT_STATUSES}
        )

    async def move(self, campaign_id: str, action: str) -> Campaign:
        """start | pause | resume | cancel; cancelling also cancels every contact not yet called."""
        allowed, target = _MOVES[action]
        now = utcnow()
        async with self.sql._transaction() as conn:
            row = await self.sql._one(
                conn,
                f"select * from campaigns where id = ?{self.sql.lock_clause}",
                self._id(campaign_id),
                what=f"campaign {campaign_id}",
            )
            if row["status"] not in allowed:
                raise CampaignStateError(f"cannot {action} a campaign that is {row['status']}")
            changes: dict[str, Any] = {"status": target, "updated_at": now}
            if action == "start":
                changes["started_at"] = now
            if action == "cancel":
                changes["completed_at"] = now
                await conn.execute(
                    "update campaign_contacts set status = 'cancelled', updated_at = ? "
                    "where campaign_id = ? and status = 'pending'",
                    self._t(now),
                    self._id(campaign_id),
                )
            sql, args = self.sql._update("campaigns", campaign_id, changes)
            await conn.execute(sql, *args)
        return await self.get(campaign_id, progress=True)

    async def running_ids(self) -> list[str]:
        async with self.sql._connection() as conn:
            found = await conn.fetch("select id from campaigns where status = 'running' order by created_at")
        return [str(row["id"]) for row in found]

    # --- contacts ----------------------------------------------------------------------------------
    async def contacts(
        self, campaign_id: str, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Contact]:
        where, args = "where campaign_id = ?", [self._id(campaign_id)]
        if status is not None:
            where += " and status = ?"
            args.append(status)
        async with self.sql._connection() as conn:
            found = await conn.fetch(
                f"select * from campaign_contacts {where} order by row_number limit ? offset ?",
                *args,
                limit,
                offset,
            )
        return [Contact.model_validate(self.sql._decode(r)) for r in found]

    async def claim_due(
        self,
        campaign_id: str,
        *,
        now: datetime,
        headroom: int | None,
        horizon_s: float,
        metadata_for: Callable[[Contact], dict[str, Any]],
    ) -> list[Claim]:
        """Take the contacts this tick may dial, write their calls, and say when to dial each.

        At most: `max_concurrency` minus the contacts being called, `headroom` (what the voice gateway
        can still carry; None: unknown), and the dials `calls_per_second` allows until `now + horizon_s`.
        Due contacts on the do-not-call list are skipped; those outside their calling window are
        deferred to its next opening. Returns nothing when another dispatcher holds the campaign.
        """
        async with self.sql._transaction() as conn:
            found = await conn.fetch(
                f"select * from campaigns where id = ? and status = 'running'{self._skip_locked}",
                self._id(campaign_id),
            )
            if not found:
                return []
            campaign = Campaign.from_row(self.sql._decode(found[0]))
            calling = await conn.fetch(
                "select count(*) as n from campaign_contacts where campaign_id = ? and status = 'calling'",
                self._id(campaign_id),
            )
            free = campaign.max_concurrency - int(calling[0]["n"])
            if headroom is not None:
                free = min(free, headroom)
            first = max(now, aware(campaign.next_dial_at) if campaign.next_dial_at else now)
            spacing = 1.0 / campaign.calls_per_second
            by_rate = math.floor((now + timedelta(seconds=horizon_s) - first).total_seconds() / spacing) + 1
            allowed = min(free, by_rate)
            due = await conn.fetch(
                f"select * from campaign_contacts where campaign_id = ? and status = 'pending' and next_attempt_at <= ? "
                f"order by next_attempt_at, row_number limit ?{self._skip_locked}",
                self._id(campaign_id),
                self._t(now),
                max(allowed, 0) + SCAN_EXTRA,
            )
            contacts = [Contact.model_validate(self.sql._decode(r)) for r in due]
            listed = await self._listed(conn, {c.phone_number for c in contacts})
            claims: list[Claim] = []
            for contact in contacts:
                if contact.phone_number in listed:
                    await self._set_contact(
                        conn, contact.id, now, status="skipped", last_outcome=outcomes.DO_NOT_CALL
                    )
                    continue
                tz = contact.timezone or campaign.timezone
                if not schedule.is_open(campaign.window, tz, now):
                    await self._set_contact(
                        conn, contact.id, now, next_attempt_at=schedule.next_open(campaign.window, tz, now)
                    )
                    continue
                if len(claims) >= allowed:
                    continue  # a later tick dials it
                call = await self._write_call(conn, campaign, contact, metadata_for(contact))
                await self._set_contact(
                    conn,
                    contact.id,
                    now,
                    status="calling",
                    attempts=contact.attempts + 1,
                    claimed_at=now,
                    last_call_id=call.id,
                )
                dial_at = first + timedelta(seconds=spacing * len(claims))
                claims.append(
                    Claim(
                        contact=contact.model_copy(
                            update={"status": "calling", "attempts": contact.attempts + 1}
                        ),
                        call=call,
                        dial_at=dial_at,
                    )
                )
            if claims:
                sql, args = self.sql._update(
                    "campaigns",
                    campaign_id,
                    {"next_dial_at": first + timedelta(seconds=spacing * len(claims)), "updated_at": now},
                )
                await conn.execute(sql, *args)
            await self._complete_if_done(conn, campaign_id, now)
        return claims

    async def _write_call(
        self, conn: Executor, campaign: Campaign, contact: Contact, metadata: dict[str, Any]
    ) -> Call:
        values = rows.new_call(campaign.agent_id, contact.phone_number, campaign.from_number, metadata)
        values.update(campaign_id=campaign.id, contact_id=contact.id)
        sql, args = self.sql._insert("calls", values)
        return Call.model_validate(await self.sql._one(conn, sql, *args, what="call"))

    async def _set_contact(self, conn: Executor, contact_id: str, now: datetime, **changes: Any) -> None:
        sql, args = self.sql._update("campaign_contacts", contact_id, {**changes, "updated_at": now})
        await conn.execute(sql, *args)

    async def _listed(self, conn: Executor, numbers: Iterable[str]) -> set[str]:
        wanted = sorted(numbers)
        if not wanted:
            return set()
        found = await conn.fetch(
            f"select number from do_not_call where number in ({', '.join('?' for _ in wanted)})", *wanted
        )
        return {row["number"] for row in found}

    async def _complete_if_done(self, conn: Executor, campaign_id: str, now: datetime) -> None:
        """A running campaign with no contact pending or being called is completed."""
        left = await conn.fetch(
            "select count(*) as n from campaign_contacts where campaign_id = ? and status in ('pending', 'calling')",
            self._id(campaign_id),
        )
        if int(left[0]["n"]) == 0:
            await conn.execute(
                "update campaigns set status = 'completed', completed_at = ?, updated_at = ? "
                "where id = ? and status = 'running'",
                self._t(now),
                self._t(now),
                self._id(campaign_id),
            )

    async def settle(self, call: Call, *, outcome: str | None = None) -> Contact | None:
        """Apply an attempt's end (`call` terminal) or its analysis `outcome` to the call's contact.

        Idempotent: only the contact's latest call moves it, a `calling` contact moves once per call, and
        an analysis outcome refines a reached contact once. Returns the contact as written, or None when
        nothing changed.
        """
        if call.contact_id is None:
            return None
        now = utcnow()
        async with self.sql._transaction() as conn:
            found = await conn.fetch(
                f"select * from campaign_contacts where id = ?{self.sql.lock_clause}",
                self._id(call.contact_id),
            )
            if not found:
                return None
            contact = Contact.model_validate(self.sql._decode(found[0]))
            if contact.last_call_id != call.id:
                return None
            campaign = Campaign.from_row(
                await self.sql._one(
                    conn,
                    "select * from campaigns where id = ?",
                    self._id(contact.campaign_id),
                    what="campaign",
                )
            )
            result = outcomes.call_result(call)
            if contact.status == "calling":
                if result is None and outcome is None:
                    return None  # still going
                if outcome is not None and result in (None, "answered"):
                    result = outcome
                assert result is not None
            elif contact.status == "completed" and outcome is not None and contact.last_outcome == "answered":
                result = outcome  # the analysis says what the answered call came to
            else:
                return None
            verdict = outcomes.decide(
                result,
                attempts=contact.attempts,
                rules=campaign.retry,
                now=now,
                # A campaign that completed on this contact's answered call still retries it when the
                # analysis names an outcome worth another attempt (it runs again below); a cancelled one never.
                active=campaign.status in ("running", "paused", "completed"),
            )
            changes: dict[str, Any] = {"status": verdict.status, "last_outcome": verdict.outcome}
            if verdict.next_attempt_at is not None:
                changes["next_attempt_at"] = verdict.next_attempt_at
            await self._set_contact(conn, contact.id, now, **changes)
            if verdict.status == "pending" and campaign.status == "completed":
                await conn.execute(
                    "update campaigns set status = 'running', completed_at = null, updated_at = ? where id = ?",
                    self._t(now), self._id(campaign.id),
                )
            if verdict.outcome == outcomes.DO_NOT_CALL:
                await self._add_dnc(
                    conn,
                    contact.phone_number,
                    reason="asked not to be called again",
                    source="call",
                    call_id=call.id,
                    now=now,
                )
            await self._complete_if_done(conn, contact.campaign_id, now)
        return contact.model_copy(update=changes)

    async def stranded(self, *, now: datetime, undialed_after_s: float) -> tuple[list[str], list[str]]:
        """Contacts left `calling` by a lost step: (calls that ended but never settled their contact,
        calls still `queued` without a call SID well after their claim: the dispatcher died before dialing)."""
        async with self.sql._connection() as conn:
            ended = await conn.fetch(
                "select c.id from campaign_contacts k join calls c on c.id = k.last_call_id where k.status = 'calling' "
                "and c.status in ('completed', 'busy', 'failed', 'no-answer', 'canceled')"
            )
            undialed = await conn.fetch(
                "select c.id from campaign_contacts k join calls c on c.id = k.last_call_id where k.status = 'calling' "
                "and c.status = 'queued' and c.twilio_call_sid is null and k.claimed_at < ?",
                self._t(now - timedelta(seconds=undialed_after_s)),
            )
        return [str(r["id"]) for r in ended], [str(r["id"]) for r in undialed]

    async def release_undialed(self, call_id: str, *, reason: str) -> bool:
        """A claimed call that was never dialed: the call is `failed` with `reason`, and its contact is
        pending again with the attempt not counted. False when the call moved on meanwhile."""
        now = utcnow()
        async with self.sql._transaction() as conn:
            found = await conn.fetch(
                f"select * from calls where id = ?{self.sql.lock_clause}", self._id(call_id)
            )
            if not found:
                return False
            call = Call.model_validate(self.sql._decode(found[0]))
            if call.status != "queued" or call.twilio_call_sid is not None or call.contact_id is None:
                return False
            sql, args = self.sql._update(
                "calls", call_id, {"status": "failed", "error": reason, "updated_at": now}
            )
            await conn.execute(sql, *args)
            await conn.execute(
                "update campaign_contacts set status = 'pending', attempts = attempts - 1, claimed_at = null, "
                "updated_at = ? where id = ? and status = 'calling' and last_call_id = ?",
                self._t(now),
                self._id(call.contact_id),
                self._id(call_id),
            )
        return True

    # --- do not call -------------------------------------------------------------------------------
    async def add_dnc(self, numbers: Iterable[str], *, reason: str | None, source: str = "api") -> int:
        """Add numbers (already E.164); returns how many were new."""
        now = utcnow()
        added = 0
        async with self.sql._transaction() as conn:
            for number in numbers:
                added += await self._add_dnc(
                    conn, number, reason=reason, source=source, call_id=None, now=now
                )
        return added

    async def _add_dnc(
        self,
        conn: Executor,
        number: str,
        *,
        reason: str | None,
        source: str,
        call_id: str | None,
        now: datetime,
    ) -> int:
        sql, args = self.sql._insert(
            "do_not_call",
            {"number": number, "reason": reason, "source": source, "call_id": call_id, "created_at": now},
            tail="on conflict (number) do nothing",
        )
        return max(await conn.execute(sql, *args), 0)

    async def remove_dnc(self, number: str) -> None:
        async with self.sql._connection() as conn:
            if not await conn.execute("delete from do_not_call where number = ?", number):
                raise NotFound(f"do-not-call number {number}")

    async def list_dnc(self, *, limit: int = 100, offset: int = 0) -> list[DoNotCall]:
        async with self.sql._connection() as conn:
            found = await conn.fetch(
                "select * from do_not_call order by created_at desc, number limit ? offset ?", limit, offset
            )
        return [DoNotCall.model_validate(self.sql._decode(r)) for r in found]

    async def is_dnc(self, number: str) -> bool:
        async with self.sql._connection() as conn:
            return bool(await self._listed(conn, [number]))
