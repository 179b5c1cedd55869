"""Webhook targets are pinned: the address the SSRF guard checked is the address connected to.

DNS and sockets are replaced at the wire (a resolver function, an httpcore network backend); the only
real sockets are servers on 127.0.0.1, there to show what must not be reached.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from shared import webhooks
from shared.storage.base import WebhookEvent
from shared.webhook_transport import PinnedBackend, WebhookTransport

PUBLIC = "93.184.216.34"
HOST = "hooks.example.test"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _event(url: str) -> WebhookEvent:
    now = datetime.now(UTC)
    return WebhookEvent(id="evt_1", call_id="call_1", type="call.ended", url=url,
                        payload={"type": "call.ended", "data": {}}, created_at=now, updated_at=now)


async def _deliver(url: str, resolver: webhooks.Resolver, backend: httpcore.AsyncNetworkBackend,
                   ) -> webhooks.AttemptResult:
    return await webhooks.attempt_delivery(_event(url), secret="s3cret", attempt=1, max_attempts=8, timeout_s=5.0,
                                           allow_private=False, resolver=resolver, network_backend=backend)


@dataclass
class RebindingResolver:
    """A hostile DNS server: a public address to the first look-up, 127.0.0.1 to every later one."""

    first: Sequence[str] = (PUBLIC,)
    later: Sequence[str] = ("127.0.0.1",)
    lookups: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        return self.first if len(self.lookups) == 1 else self.later


class FakeStream(httpcore.AsyncNetworkStream):
    """A far end that is not on this machine: records what is sent and answers `response` once."""

    def __init__(self, response: bytes) -> None:
        self.sent = b""
        self.tls: list[tuple[ssl.SSLContext, str | None]] = []
        self._response = response

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        response, self._response = self._response, b""
        return response

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.sent += buffer

    async def aclose(self) -> None:
        pass

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        self.tls.append((ssl_context, server_hostname))
        return self


@dataclass
class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records every connection. A name is looked up at connect time with `resolver`, as a plain client does;
    loopback addresses get a real socket, public ones a `FakeStream` (nothing outside can be reached)."""

    resolver: webhooks.Resolver = field(default_factory=RebindingResolver)
    response: bytes = OK
    refuse: frozenset[str] = frozenset()
    connections: list[tuple[str, int]] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        self.connections.append((host, port))
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = ipaddress.ip_address((await self.resolver(host, port))[0])
        if str(address) in self.refuse:
            raise httpcore.ConnectError(f"{address} refused the connection")
        if address.is_loopback:
            return await httpcore.AnyIOBackend().connect_tcp(str(address), port, timeout=timeout)
        self.streams.append(FakeStream(self.response))
        return self.streams[-1]

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class LocalServer:
    """An HTTP server on 127.0.0.1 that answers 200 and records every connection it accepts."""

    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            self.requests.append(head + await reader.readexactly(length))
            writer.write(OK)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # a client that gave up (a refused certificate) sent no request: nothing to record
        finally:
            writer.close()


@asynccontextmanager
async def local_server(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[LocalServer]:
    received = LocalServer()
    if ssl_context is not None:
        ssl_context.sni_callback = lambda _sock, name, _ctx: received.server_names.append(name)
    server = await asyncio.start_server(received.handle, "127.0.0.1", 0, ssl=ssl_context)
    received.port = server.sockets[0].getsockname()[1]
    async with server:
        yield received


# --- rebinding -------------------------------------------------------------------------------------


async def test_rebinding_dns_cannot_steer_a_delivery_to_a_local_server() -> None:
    async with local_server() as server:
        resolver = RebindingResolver()
        backend = RecordingBackend(resolver)
        result = await _deliver(f"http://{HOST}:{server.port}/hook", resolver, backend)
        await asyncio.sleep(0.05)
    assert result.outcome == "delivered", result
    assert resolver.lookups == [HOST]  # one look-up: the one that was checked
    assert backend.connections == [(PUBLIC, server.port)]  # the checked address, never the name
    assert server.requests == []
    assert backend.streams[0].sent.startswith(b"POST /hook HTTP/1.1\r\n")


async def test_without_pinning_the_same_dns_reaches_the_local_server() -> None:
    """The control: a client that looks the name up again at connect time is steered to 127.0.0.1."""
    async with local_server() as server:
        resolver = RebindingResolver()
        await webhooks.check_target(f"http://{HOST}:{server.port}/hook", allow_private=False, resolver=resolver)
        async with httpx.AsyncClient(transport=WebhookTransport(RecordingBackend(resolver))) as client:
            response = await client.post(f"http://{HOST}:{server.port}/hook", content=b"{}")
    assert response.status_code == 200 and len(server.requests) == 1


async def test_a_redirect_is_not_followed_to_an_unchecked_address() -> None:
    async with local_server() as server:
        backend = RecordingBackend(response=(f"HTTP/1.1 307 Temporary Redirect\r\nLocation: "
                                             f"http://127.0.0.1:{server.port}/hook\r\nContent-Length: 0\r\n\r\n").encode())
        result = await _deliver(f"http://{HOST}/hook", RebindingResolver(), backend)
    assert (result.outcome, result.error) == ("pending", "HTTP 307")
    assert backend.connections == [(PUBLIC, 80)] and server.requests == []


# --- the check -------------------------------------------------------------------------------------


@pytest.mark.parametrize("private", ["127.0.0.1", "10.0.0.7", "192.168.1.5", "169.254.169.254", "100.64.0.1",
                                     "0.0.0.0", "::1", "fd00::1", "fe80::1", "::ffff:127.0.0.1"])
async def test_a_host_resolving_to_any_private_address_is_refused(private: str) -> None:
    backend = RecordingBackend()
    result = await _deliver(f"https://{HOST}/hook", RebindingResolver(first=(PUBLIC, private)), backend)
    assert result.outcome == "failed" and result.status_code is None
    assert result.error == (f"refused: webhook host {HOST} resolves to private address {private} "
                            "(set WEBHOOK_ALLOW_PRIVATE=true to allow it)")
    assert backend.connections == []


@pytest.mark.parametrize("answer", [(), socket.gaierror(socket.EAI_NONAME, "Name or service not known")])
async def test_a_host_that_does_not_resolve_is_refused(answer: Sequence[str] | Exception) -> None:
    async def resolver(host: str, port: int) -> Sequence[str]:
        if isinstance(answer, Exception):
            raise answer
        return answer

    backend = RecordingBackend()
    result = await _deliver(f"https://{HOST}/hook", resolver, backend)
    assert result.outcome == "failed" and f"webhook host {HOST} does not resolve" in (result.error or "")
    assert backend.connections == []


async def test_the_host_is_looked_up_as_the_connection_names_it() -> None:
    """IDNA-encoded and lower case, as httpx hands it to the connection; a literal address needs no look-up."""
    resolver = RebindingResolver()
    target = await webhooks.check_target("https://Hooks.Bücher.example/x", allow_private=False, resolver=resolver)
    assert target == webhooks.CheckedTarget("hooks.xn--bcher-kva.example", (PUBLIC,))
    assert await webhooks.check_target(f"http://{PUBLIC}/x", allow_private=False, resolver=resolver) == \
        webhooks.CheckedTarget(PUBLIC, (PUBLIC,))
    assert resolver.lookups == ["hooks.xn--bcher-kva.example"]


async def test_private_targets_still_connect_as_before_when_allowed() -> None:
    async with local_server() as server:
        result = await webhooks.attempt_delivery(
            _event(f"http://127.0.0.1:{server.port}/hook"), secret="s3cret", attempt=1, max_attempts=8,
            timeout_s=5.0, allow_private=True,
        )
    assert result.outcome == "delivered" and len(server.requests) == 1


# --- the pinned connection -------------------------------------------------------------------------


async def test_the_request_keeps_the_hostname_in_host_header_and_tls_server_name() -> None:
    backend = RecordingBackend()
    result = await _deliver(f"https://{HOST}/hook", RebindingResolver(), backend)
    assert result.outcome == "delivered", result
    assert backend.connections == [(PUBLIC, 443)]
    [stream] = backend.streams
    [(context, server_name)] = stream.tls
    assert server_name == HOST
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    head = stream.sent.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /hook HTTP/1.1" and f"Host: {HOST}".encode() in head


async def test_every_checked_address_is_tried_in_order_and_no_other() -> None:
    v6 = "2606:4700:4700::1111"
    backend = RecordingBackend(refuse=frozenset({v6}))
    result = await _deliver(f"http://{HOST}:8080/hook", RebindingResolver(first=(v6, PUBLIC)), backend)
    assert result.outcome == "delivered" and backend.connections == [(v6, 8080), (PUBLIC, 8080)]


async def test_the_pinned_backend_refuses_any_other_host() -> None:
    backend = RecordingBackend()
    pinned = PinnedBackend(HOST, [PUBLIC], backend)
    with pytest.raises(httpcore.ConnectError, match="only hooks.example.test was checked"):
        await pinned.connect_tcp("elsewhere.example.test", 80)
    assert backend.connections == []


# --- real TLS to the pinned address ----------------------------------------------------------------


def _certificates(name: str) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, leaf certificate for DNS name `name` only, leaf key), all PEM."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)

    def build(subject: str, issuer: str, key: Any, signer: Any, *, ca: bool) -> Any:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ), critical=True)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("RelayX test CA", "RelayX test CA", ca_key, ca_key, ca=True)
    leaf = build(name, "RelayX test CA", leaf_key, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


@pytest.mark.parametrize("certificate_for", [HOST, "other.example.test"])
async def test_tls_to_the_pinned_address_checks_the_certificate_against_the_hostname(
        certificate_for: str, tmp_path: Path) -> None:
    """The certificate names only the host (no IP): it passes for that host and fails for any other."""
    ca, leaf, key = _certificates(certificate_for)
    (tmp_path / "leaf.pem").write_bytes(leaf)
    (tmp_path / "key.pem").write_bytes(key)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "key.pem")
    trusting_ca = ssl.create_default_context(cadata=ca.decode())
    transport = WebhookTransport(PinnedBackend(HOST, ["127.0.0.1"]), verify=trusting_ca)
    async with local_server(server_context) as server, httpx.AsyncClient(transport=transport) as client:
        url = f"https://{HOST}:{server.port}/hook"
        if certificate_for == HOST:
            response = await client.post(url, content=b"{}")
            assert response.status_code == 200
            assert server.requests[0].startswith(b"POST /hook HTTP/1.1\r\n")
            assert f"Host: {HOST}:{server.port}".encode() in server.requests[0]
        else:
            with pytest.raises(httpx.ConnectError, match="Hostname mismatch"):
                await client.post(url, content=b"{}")
            assert server.requests == []
    assert server.server_names == [HOST]
