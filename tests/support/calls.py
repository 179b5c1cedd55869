"""A database made ready and a call to stream, for tests that drive a gateway with no backend beside it."""

from __future__ import annotations

from shared.settings import Settings
from shared.storage import build_storage
from shared.storage.base import Call


async def migrate(settings: Settings) -> None:
    """Apply the migrations (the backend does it in production; these tests run no backend)."""
    storage = build_storage(settings)
    await storage.open()
    try:
        await storage.migrate()
    finally:
        await storage.close()


async def new_call(settings: Settings) -> Call:
    """A queued call of a brief agent that greets with "Hello there." at once (no answering-machine
    screening: these tests' far ends wait for the greeting)."""
    storage = build_storage(settings)
    await storage.open()
    try:
        agent = await storage.create_agent({"name": "Ava", "prompt": "Be brief.", "greeting": "Hello there.",
                                            "settings": {"voicemail": {"detect": False}}})
        return await storage.create_call(agent_id=agent.id, to_number="+15550001111", from_number=None, metadata={})
    finally:
        await storage.close()
