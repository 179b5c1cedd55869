"""Agents: create, read, update, delete."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from backend.deps import StorageDep
from backend.schemas import AgentCreate, AgentOut, AgentUpdate
from shared.errors import NotFound

router = APIRouter(prefix="/agents", tags=["agents"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AgentOut)
async def create_agent(body: AgentCreate, storage: StorageDep) -> AgentOut:
    agent = await storage.create_agent(body.model_dump())
    return AgentOut.model_validate(agent.model_dump())


@router.get("", response_model=list[AgentOut])
async def list_agents(storage: StorageDep, limit: int = 100, offset: int = 0) -> list[AgentOut]:
    agents = await storage.list_agents(limit=max(1, min(limit, 500)), offset=max(0, offset))
    return [AgentOut.model_validate(a.model_dump()) for a in agents]


@router.get("/{agent_id}", response_model=AgentOut)
async def get_agent(agent_id: str, storage: StorageDep) -> AgentOut:
    try:
        agent = await storage.get_agent(agent_id)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"agent {agent_id} not found") from None
    return AgentOut.model_validate(agent.model_dump())


@router.patch("/{agent_id}", response_model=AgentOut)
async def update_agent(agent_id: str, body: AgentUpdate, storage: StorageDep) -> AgentOut:
    changes = body.model_dump(exclude_unset=True)
    for required in ("name", "prompt", "language", "llm", "settings"):
        if required in changes and changes[required] is None:
            raise HTTPException(422, f"{required} cannot be null")
    try:
        agent = await storage.update_agent(agent_id, changes)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"agent {agent_id} not found") from None
    return AgentOut.model_validate(agent.model_dump())


@router.delete("/{agent_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_agent(agent_id: str, storage: StorageDep) -> None:
    try:
        await storage.delete_agent(agent_id)
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"agent {agent_id} not found") from None
