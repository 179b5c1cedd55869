"""The campaign dispatcher: the periodic job that claims due contacts and dials them.

One tick: for every running campaign, claim what its limits allow (`CampaignStore.claim_due`: the
concurrency left, the voice gateways' headroom, the calls-per-second budget until the next tick), then
dial each claim at its time through the ordinary outbound path (`Dialer`: the backend's telephony).
The same tick settles contacts whose call ended without settling them (a lost status callback handler)
and releases claims that were never dialed (a dispatcher killed between its claim and its dial).

It runs as a procrastinate periodic job on PostgreSQL (`relayx worker`, any number of them) and as a
loop inside the backend on SQLite.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

from shared.campaigns.models import Claim, Contact
from shared.errors import NotFound, RelayXError
from shared.storage.base import Agent, Call, Storage, utcnow
from shared.storage.campaigns import campaign_store

log = logging.getLogger(__name__)

UNDIALED_REASON = "never dialed: the dispatcher stopped between claiming the contact and dialing"


class DialRefused(RelayXError):
    """The phone provider refused the call (bad number, account limits): the attempt failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Dialer(Protocol):
    """Places an already-written call; returns the provider's call SID or raises `DialRefused`."""

    async def dial(self, call: Call, agent: Agent) -> str: ...


Headroom = Callable[[Storage], Awaitable[int | None]]
"""How many more calls the voice gateways can carry now (None: they do not say)."""


def call_metadata(contact: Contact, *, simulate: bool) -> dict[str, Any]:
    """The call row's metadata: the campaign, the contact and its variables (the agent's prompt and
    greeting fill `{name}` placeholders from them). On the simulated line a `simulate` variable is the
    callee's script, as `metadata.simulate` of POST /calls/outbound."""
    metadata: dict[str, Any] = {
        "campaign_id": contact.campaign_id,
        "contact_id": contact.id,
        "variables": dict(contact.variables),
    }
    script = contact.variables.get("simulate")
    if simulate and isinstance(script, str) and script.strip():
        try:
            metadata["simulate"] = json.loads(script)
        except json.JSONDecodeError:
            metadata["simulate"] = script.strip()  # "busy", "no-answer", or one line the callee says
    return metadata


class Dispatcher:
    """Dials campaign contacts through `dialer`, within `headroom`; one `tick` at a time per process."""

    def __init__(
        self,
        storage: Storage,
        dialer: Dialer,
        *,
        headroom: Headroom | None = None,
        horizon_s: float = 2.0,
        undialed_after_s: float = 60.0,
        simulate: bool = False,
    ) -> None:
        self.storage = storage
        self.dialer = dialer
        self.headroom = headroom
        self.horizon_s = horizon_s
        self.undialed_after_s = undialed_after_s
        self.simulate = simulate
        self._lock = asyncio.Lock()

    async def tick(self, now: datetime | None = None) -> int:
        """Serve every running campaign once; returns how many calls were dialed."""
        async with self._lock:
            store = campaign_store(self.storage)
            await self._sweep(now or utcnow())
            dialed = 0
            for campaign_id in await store.running_ids():
                headroom = await self.headroom(self.storage) if self.headroom is not None else None
                claimed_at = now or utcnow()
                started = asyncio.get_running_loop().time()
                claims = await store.claim_due(
                    campaign_id,
                    now=claimed_at,
                    headroom=headroom,
                    horizon_s=self.horizon_s,
                    metadata_for=lambda contact: call_metadata(contact, simulate=self.simulate),
                )
                for claim in claims:
                    # The calls-per-second spacing, counted from the claim (a deadline, not a wait for an event).
                    due = started + (claim.dial_at - claimed_at).total_seconds()
                    wait = due - asyncio.get_running_loop().time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    dialed += await self._dial(claim)
            return dialed

    async def _dial(self, claim: Claim) -> int:
        try:
            agent = await self.storage.get_agent(claim.call.agent_id)
            sid = await self.dialer.dial(claim.call, agent)
        except (DialRefused, NotFound) as exc:
            reason = exc.reason if isinstance(exc, DialRefused) else f"the agent is gone: {exc}"
            log.warning("campaign call %s to %s refused: %s", claim.call.id, claim.call.to_number, reason)
            call = await self.storage.update_call(claim.call.id, {"status": "failed", "error": reason})
            await campaign_store(self.storage).settle(call)
            return 0
        # A status callback may already have attached the SID; writing the same one again is harmless.
        await self.storage.update_call(claim.call.id, {"twilio_call_sid": sid})
        log.info(
            "campaign %s: dialed %s (attempt %d)",
            claim.contact.campaign_id,
            claim.call.to_number,
            claim.contact.attempts,
        )
        return 1

    async def _sweep(self, now: datetime) -> None:
        store = campaign_store(self.storage)
        ended, undialed = await store.stranded(now=now, undialed_after_s=self.undialed_after_s)
        for call_id in ended:
            await store.settle(await self.storage.get_call(call_id))
        for call_id in undialed:
            if await store.release_undialed(call_id, reason=UNDIALED_REASON):
                log.warning(
                    "campaign call %s was claimed but never dialed: its contact is due again", call_id
                )


async def settle_call(storage: Storage, call: Call, *, outcome: str | None = None) -> None:
    """The call ended (or was analysed): move its campaign contact on. A call of no campaign, or a
    storage without campaigns, is left alone."""
    if call.contact_id is None:
        return
    contact = await campaign_store(storage).settle(call, outcome=outcome)
    if contact is not None:
        log.info(
            "campaign contact %s (%s): %s after attempt %d (%s)",
            contact.id,
            contact.phone_number,
            contact.status,
            contact.attempts,
            contact.last_outcome,
        )
