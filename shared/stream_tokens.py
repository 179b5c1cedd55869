"""Short-lived tokens that let a browser open a Media Stream for one call.

Twilio authenticates its stream upgrade with X-Twilio-Signature; a browser cannot set headers on a
WebSocket, so the backend hands the browser phone a token in the stream URL instead: the call id and
an expiry, HMAC-signed with the same secret that signs Twilio's requests.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TOKEN_TTL_S = 120  # long enough to open the socket; the call itself may last any time after


def issue(secret: str, call_id: str, *, now: float | None = None) -> str:
    expires = int((now or time.time()) + TOKEN_TTL_S)
    return f"{call_id}.{expires}.{_mac(secret, call_id, expires)}"


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
