"""Short-lived tokens that let a client other than Twilio open a Media Stream for one call.

Twilio authenticates its stream upgrade with X-Twilio-Signature. Every other client (the browser
phone, which cannot set headers on a WebSocket; the simulated line; benchmarks) brings a token in
the stream URL instead: the call id and an expiry, HMAC-signed with the secret that signs Twilio's
requests (`twilio_auth.signing_token`). The gateway accepts a stream only with one or the other.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TOKEN_TTL_S = 120  # long enough to open the socket; the call itself may last any time after


def issue(secret: str, call_id: str, *, now: float | None = None) -> str:
    expires = int((now or time.time()) + TOKEN_TTL_S)
    return f"{call_id}.{expires}.{_mac(secret, call_id, expires)}"


def stream_url(media_url: str, secret: str, call_id: str) -> str:
    """The gateway's /media URL with a fresh token for `call_id`."""
    return f"{media_url}{'&' if '?' in media_url else '?'}token={issue(secret, call_id)}"


def verify(secret: str, token: str | None, *, now: float | None = None) -> str | None:
    """The call id the token was issued for, or None if it is malformed, forged or expired."""
    if not token or token.count(".") != 2:
        return None
    call_id, expires, mac = token.split(".")
    if not expires.isdigit() or int(expires) < (now or time.time()):
        return None
    if not hmac.compare_digest(mac, _mac(secret, call_id, int(expires))):
        return None
    return call_id


def _mac(secret: str, call_id: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"{call_id}.{expires}".encode(), hashlib.sha256).hexdigest()
