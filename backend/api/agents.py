"""Agents: create, read, update, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from backend.deps import SettingsDep, StorageDep
from backend.errors import MALFORMED_BODY, NOT_FOUND, unprocessable
from backend.schemas import MAX_OFFSET, AgentCreate, AgentOut, AgentUpdate
from shared import webhooks
from shared.agent_config import AgentSettings
from shared.settings import Settings

router = APIRouter(prefix="/agents", tags=["agents"])


def _check_webhook_target(agent_settings: AgentSettings | None, settings: Settings) -> None:
    """Refuse a loopback/private webhook host up front (deliveries re-check after DNS)."""
    url = agent_settings.webhook_url if agent_settings is not None else None
    if url and not settings.webhook_allow_private and webhooks.literal_host_is_private(url):
        raise unprocessable(
            ("body", "settings", "webhook_url"),
            "private and loopback hosts are refused (set WEBHOOK_ALLOW_PRIVATE=true)",
            url,
        )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AgentOut, responses=MALFORMED_BODY)
async def create_agent(body: AgentCreate, storage: StorageDep, settings: SettingsDep) -> AgentOut:
    _check_webhook_target(body.settings, settings)
    agent = await storage.create_agent(body.model_dump())
    return AgentOut.model_validate(agent, from_attributes=True)


@router.get("", response_model=list[AgentOut])
async def list_agents(
    storage: StorageDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[AgentOut]:
    agents = await storage.list_agents(limit=limit, offset=offset)
    return [AgentOut.model_validate(a, from_attributes=True) for a in agents]


@router.get("/{agent_id}", response_model=AgentOut, responses=NOT_FOUND)
async def get_agent(agent_id: str, storage: StorageDep) -> AgentOut:
    return AgentOut.model_validate(await storage.get_agent(agent_id), from_attributes=True)


@router.patch("/{agent_id}", response_model=AgentOut, responses={**NOT_FOUND, **MALFORMED_BODY})
async def update_agent(agent_id: str, body: AgentUpdate, storage: StorageDep, settings: SettingsDep) -> AgentOut:
    """Change the fields given; `greeting` and `voice` may be set to null, the others may not."""
    _check_webhook_target(body.settings, settings)
    changes = body.model_dump(exclude_unset=True)
    return AgentOut.model_validate(await storage.update_agent(agent_id, changes), from_attributes=True)


@router.delete("/{agent_id}", status_code=status.HTTP_204_NO_CONTENT, responses=NOT_FOUND)
async def delete_agent(agent_id: str, storage: StorageDep) -> None:
    await storage.delete_agent(agent_id)
