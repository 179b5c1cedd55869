"""Storage: pick the implementation from settings."""

from __future__ import annotations

from shared.settings import Settings
from shared.storage.base import Agent, Call, CallAnalysis, PhoneNumber, Storage, TranscriptLine

__all__ = ["Agent", "Call", "CallAnalysis", "PhoneNumber", "Storage", "TranscriptLine", "build_storage"]


def build_storage(settings: Settings) -> Storage:
    """Supabase's REST API when SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are set (they win over
    DATABASE_URL); otherwise SQLite for `sqlite://` URLs (the embedded default), PostgreSQL for `postgres://`."""
    if settings.supabase_url and settings.supabase_service_role_key:
        from shared.storage.supabase import SupabaseStorage

        return SupabaseStorage(settings.supabase_url, settings.supabase_service_role_key)
    url = settings.database_url
    if url.startswith("sqlite"):
        from shared.storage.sqlite import SQLiteStorage

        return SQLiteStorage(url)
    if url.startswith("postgres"):
        from shared.storage.postgres import PostgresStorage

        return PostgresStorage(url)
    raise ValueError(f"DATABASE_URL must start with sqlite:// or postgresql://, got {url.split(':')[0]!r}")
