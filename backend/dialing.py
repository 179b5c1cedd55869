"""The backend's side of campaign dispatch: dial through its telephony, within the gateways' capacity."""

from __future__ import annotations

from backend.capacity import Admission, GatewayProbe
from backend.telephony import build_telephony
from backend.telephony.base import Telephony, TelephonyError
from shared.campaigns.dispatch import DialRefused, Dispatcher
from shared.settings import Settings
from shared.storage.base import Agent, Call, Storage


class TelephonyDialer:
    """`Dialer` over the backend's telephony: Twilio's REST API, or the simulated line."""

    def __init__(self, telephony: Telephony) -> None:
        self.telephony = telephony

    async def dial(self, call: Call, agent: Agent) -> str:
        try:
            placed = await self.telephony.place_call(call, agent)
        except TelephonyError as exc:
            raise DialRefused(exc.reason) from None
        return placed.sid


def build_dispatcher(
    settings: Settings, storage: Storage, telephony: Telephony, admission: Admission
) -> Dispatcher:
    """The campaign dispatcher of this process: one tick serves the dials due until the next tick."""
    return Dispatcher(
        storage,
        TelephonyDialer(telephony),
        headroom=admission.headroom,
        horizon_s=settings.campaign_tick_s,
        undialed_after_s=settings.campaign_undialed_after_s,
        simulate=settings.telephony_provider == "simulator",
    )


async def run_dispatching_worker(settings: Settings) -> None:
    """`relayx worker`: post-call jobs and campaign ticks, dialing through this process's telephony."""
    from shared.jobs.runners import run_worker

    telephony = build_telephony(settings)
    admission = Admission(
        GatewayProbe(settings.gateway_http_url), retry_after_s=settings.capacity_retry_after_s
    )
    try:
        await run_worker(
            settings,
            dispatcher_factory=lambda storage: build_dispatcher(settings, storage, telephony, admission),
        )
    finally:
        await telephony.close()
        await admission.aclose()
