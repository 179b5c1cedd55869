"""Twilio request signatures (X-Twilio-Signature), for webhooks and the Media Streams upgrade."""

from __future__ import annotations

from collections.abc import Mapping

from twilio.request_validator import RequestValidator

from shared.settings import Settings


def signing_token(settings: Settings) -> str:
    """Twilio signs with the account's auth token; the simulator, having none, signs with the API key."""
    return settings.twilio_auth_token or settings.api_key


def sign(token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """The signature Twilio would send for a request to `url` with form `params`."""
    return str(RequestValidator(token).compute_signature(url, dict(params or {})))


def is_valid(token: str, url: str, params: Mapping[str, str], signature: str | None) -> bool:
    """Check a signature against the public URL, with and without a trailing slash.

    Proxies and tunnels (ngrok) sometimes add or drop the slash Twilio signed.
    """
    if not signature:
        return False
    validator = RequestValidator(token)
    candidates = {url, url.rstrip("/"), url.rstrip("/") + "/"}
    return any(validator.validate(candidate, dict(params), signature) for candidate in candidates)
