"""An httpx transport that connects webhook deliveries to the addresses the SSRF guard checked.

Checking a name's addresses and then letting the HTTP client look the name up again leaves a
DNS-rebinding window: a hostile DNS server answers a public address to the check and 127.0.0.1 to
the connection. Here the look-up happens once (shared/webhooks.py), and the network backend dials
those addresses whatever name httpcore hands it. Only the socket's destination changes: the request
keeps its URL, so the Host header, the TLS server name (SNI) and the certificate's hostname check are
still for the original name (httpcore's `AsyncHTTPConnection._connect` passes `server_hostname=<URL
host>` to `start_tls`, and httpx's default SSL context has `check_hostname` on and `CERT_REQUIRED`).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore
import httpx


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Dials `addresses` (already checked) for connections to `host`, and refuses every other host.

    The addresses are tried in order, each with the connect timeout, as `socket.create_connection`
    does; a host that is not `host` can only come from a redirect or a proxy, neither of which a
    webhook delivery uses, so it is refused rather than looked up.
    """

    def __init__(self, host: str, addresses: Sequence[str], inner: httpcore.AsyncNetworkBackend | None = None):
        if not addresses:
            raise ValueError("a pinned host needs at least one address")
        self.host = host
        self.addresses = tuple(addresses)
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if host != self.host:
            raise httpcore.ConnectError(f"connection to {host} refused: only {self.host} was checked")
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in self.addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhook deliveries do not use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class WebhookTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (HTTP/1.1, TLS, error mapping) over a given network backend, no proxy.

    httpx takes no network backend, so the connection pool it built is swapped for one that has it;
    tests/unit/test_webhook_pinning.py fails if that swap stops taking effect. Environment proxies
    are not used: a proxy would look the name up again itself.
    """

    def __init__(self, network_backend: httpcore.AsyncNetworkBackend, *, verify: ssl.SSLContext | bool = True):
        ssl_context = httpx.create_ssl_context(verify=verify)
        super().__init__(verify=ssl_context)
        self._pool = httpcore.AsyncConnectionPool(ssl_context=ssl_context, network_backend=network_backend)
