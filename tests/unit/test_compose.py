"""docker-compose.yml: the expected services, healthchecks and start-up ordering, gateways that scale
behind nginx and drain before Docker kills them, the `llm` profile, and a valid file.

deploy/compose/nginx.conf is checked by Debian's nginx where it is installed (`nginx -t`), and run:
in front of two fake gateway replicas on loopback addresses, named by a fake of Docker's DNS.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "compose" / "nginx.conf"
LONG_RUNNING = ("postgres", "ollama", "backend", "gateway", "proxy")
BUNDLED_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian's package: apt-get install nginx)")
needs_compose = pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) is not on PATH")


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def _depends_on(service: dict) -> dict:
    deps = service.get("depends_on", {})
    assert isinstance(deps, dict), "depends_on must use the long form, with conditions"
    return deps


def _default(value: str) -> str:
    """A value as Compose resolves it when its variables are unset: `${VAR:-default}` -> default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def _seconds(duration: str) -> float:
    """A Compose duration (`660s`, `11m`, `1m30s`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_services_exist(services: dict) -> None:
    for name in (*LONG_RUNNING, "migrate", "worker", "llm", "llm-model"):
        assert name in services, f"missing service {name!r}"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_service_has_healthcheck(services: dict, name: str) -> None:
    healthcheck = services[name].get("healthcheck")
    assert healthcheck and healthcheck.get("test"), f"{name} has no healthcheck"
    assert not healthcheck.get("disable"), f"{name} disables its healthcheck"


@pytest.mark.parametrize("name", ["backend", "gateway"])
def test_app_waits_for_healthy_postgres(services: dict, name: str) -> None:
    assert _depends_on(services[name]).get("postgres", {}).get("condition") == "service_healthy"


def test_backend_waits_for_migrations(services: dict) -> None:
    migrate = services["migrate"]
    command = migrate["command"]
    assert (" ".join(command) if isinstance(command, list) else command) == "relayx migrate"
    assert _depends_on(migrate).get("postgres", {}).get("condition") == "service_healthy"
    condition = _depends_on(services["backend"]).get("migrate", {}).get("condition")
    assert condition == "service_completed_successfully"


def test_gateway_waits_for_ollama(services: dict) -> None:
    assert _depends_on(services["gateway"]).get("ollama", {}).get("condition") == "service_healthy"


@pytest.mark.parametrize("name", ["backend", "gateway", "worker"])
def test_app_environment_targets_compose_services(services: dict, name: str) -> None:
    env = services[name]["environment"]
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert _default(env["LLM_ENGINE"]) == "ollama"  # unless COMPOSE_LLM_ENGINE says otherwise
    assert env["OLLAMA_BASE_URL"] == "http://ollama:11434"
    assert env["OPENAI_BASE_URL"] == "http://llm:8080/v1"
    assert env["BACKEND_INTERNAL_URL"] == "http://backend:8000"
    assert env["GATEWAY_INTERNAL_URL"] == "http://gateway:8001"


@pytest.mark.parametrize(
    ("name", "dockerfile"), [("backend", "Dockerfile.backend"), ("gateway", "Dockerfile.gateway")]
)
def test_app_builds_from_dockerfile(services: dict, name: str, dockerfile: str) -> None:
    assert services[name]["build"]["dockerfile"] == dockerfile
    assert (ROOT / dockerfile).is_file()


# --- many gateways behind nginx -----------------------------------------------------------------


def test_gateway_can_be_scaled(services: dict) -> None:
    """`--scale gateway=N`: replicas cannot share a container name or a host port."""
    gateway = services["gateway"]
    assert "container_name" not in gateway and "ports" not in gateway
    assert services["proxy"]["ports"] == ["${GATEWAY_PUBLIC_PORT:-8001}:8001"]  # the one public address


def test_gateway_drains_before_docker_kills_it(services: dict) -> None:
    gateway = services["gateway"]
    drain_s = float(gateway["environment"]["GATEWAY_DRAIN_TIMEOUT_S"])
    assert drain_s == 600
    # After the timeout the remaining calls are ended politely (up to 30 s): a minute more.
    assert _seconds(gateway["stop_grace_period"]) >= drain_s + 60
    assert _seconds(services["proxy"]["stop_grace_period"]) >= drain_s + 60
    shutdown = re.search(r"^worker_shutdown_timeout (\d+)s;", NGINX_CONF.read_text(), re.MULTILINE)
    assert shutdown and int(shutdown.group(1)) >= drain_s + 60
    assert "/ready" in " ".join(gateway["healthcheck"]["test"])


def test_each_gateway_keeps_its_own_spool(services: dict) -> None:
    gateway = services["gateway"]
    spool = gateway["environment"]["SPOOL_DIR"]
    assert spool in gateway["volumes"], "an anonymous volume per replica"
    assert not spool.startswith("/app/data"), "not in the volume every replica shares"
    assert re.search(rf"mkdir -p [^\n]*{spool}[^\n]*chown -R relayx:relayx [^\n]*{spool}",
                     (ROOT / "Dockerfile.gateway").read_text())


def test_proxy_spreads_streams_over_gateway_replicas(services: dict) -> None:
    proxy = services["proxy"]
    assert proxy["image"].startswith("nginx:")
    assert "./deploy/compose/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert _depends_on(proxy)["gateway"]["condition"] == "service_started"
    text = NGINX_CONF.read_text()
    assert "resolver 127.0.0.11 " in text  # Docker's DNS: every replica, re-read at run time
    assert "set $gateways gateway:8001;" in text and "proxy_pass http://$gateways;" in text
    assert "proxy_next_upstream error timeout http_503;" in text
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "proxy_set_header Connection $connection_upgrade;" in text
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", text)
    assert read_timeout and int(read_timeout.group(1)) >= 3600
    assert re.search(r"location = /metrics \{\s*return 404;", text), "metrics never leave through the proxy"


# --- the `llm` profile --------------------------------------------------------------------------


def test_llm_server_is_an_opt_in_profile_on_the_bundled_model(services: dict) -> None:
    llm, model = services["llm"], services["llm-model"]
    assert llm["profiles"] == ["llm"] and model["profiles"] == ["llm"]
    assert llm["image"] == "ghcr.io/ggml-org/llama.cpp:server"
    command = llm["command"]
    assert _default(command[command.index("--model") + 1]) == f"/data/models/{BUNDLED_GGUF}"
    assert "--jinja" in command  # tool calls in the chat template
    assert "relayx-data:/data:ro" in llm["volumes"]
    assert "ensure_model_file(Path('/app/data/models'))" in " ".join(model["command"])
    assert _depends_on(llm)["llm-model"]["condition"] == "service_completed_successfully"
    for name in LONG_RUNNING:  # a profile's service cannot be depended on by the default ones
        assert "llm" not in _depends_on(services[name]), name


# --- docker-compose itself ----------------------------------------------------------------------


def _compose(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Compose v1 refuses a missing env_file, and a developer's own `.env` should not decide the result:
    # resolve relative paths against an empty project directory holding an empty `.env`.
    (tmp_path / ".env").write_text("")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "--project-directory", str(tmp_path), *args],
        check=False, capture_output=True, text=True, timeout=60, env={**clean, **(env or {})},
    )


@needs_compose
@pytest.mark.parametrize("profile", [[], ["--profile", "llm"]], ids=["default", "llm"])
def test_docker_compose_config_is_valid(tmp_path: Path, profile: list[str]) -> None:
    result = _compose(tmp_path, *profile, "config", "-q")
    assert result.returncode == 0, result.stderr or result.stdout


@needs_compose
def test_llm_profile_points_every_gateway_at_the_shared_server(tmp_path: Path) -> None:
    result = _compose(tmp_path, "--profile", "llm", "config", env={"COMPOSE_LLM_ENGINE": "openai"})
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert resolved["llm"]["profiles"] == ["llm"] and "profiles" not in resolved["gateway"]
    for name in ("gateway", "worker"):
        env = resolved[name]["environment"]
        assert env["LLM_ENGINE"] == "openai" and env["OPENAI_BASE_URL"] == "http://llm:8080/v1"
    assert f"/data/models/{BUNDLED_GGUF}" in resolved["llm"]["command"]


# --- nginx itself -------------------------------------------------------------------------------


@needs_nginx
def test_nginx_accepts_the_compose_proxy_config(tmp_path: Path) -> None:
    assert NGINX is not None
    result = subprocess.run(
        [NGINX, "-t", "-c", str(NGINX_CONF), "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
         "-g", f"pid {tmp_path}/nginx.pid;"],
        check=False, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _FakeDockerDns(threading.Thread):
    """Docker's embedded DNS as far as nginx asks it: `gateway` -> one A record per replica."""

    def __init__(self, addresses: list[str]) -> None:
        super().__init__(daemon=True)
        self.addresses = addresses
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])

    def run(self) -> None:
        while True:
            try:
                query, client = self.sock.recvfrom(512)
            except OSError:
                return
            self.sock.sendto(self._answer(query), client)

    def _answer(self, query: bytes) -> bytes:
        end = 12
        labels = []
        while query[end]:
            labels.append(query[end + 1:end + 1 + query[end]].decode())
            end += 1 + query[end]
        question = query[12:end + 5]
        qtype = struct.unpack("!H", query[end + 1:end + 3])[0]
        records = self.addresses if labels == ["gateway"] and qtype == 1 else []
        header = query[:2] + struct.pack("!HHHHH", 0x8180 if labels == ["gateway"] else 0x8183, 1, len(records), 0, 0)
        answers = b"".join(struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(a) for a in records)
        return header + question + answers

    def close(self) -> None:
        self.sock.close()


@dataclass
class _FakeGateway:
    """One gateway replica at the socket: refuses the upgrade like a full gateway (503 + Retry-After),
    or accepts it (101) and echoes the stream; counts the upgrades it saw and their headers."""

    address: str
    port: int
    full: bool = False
    upgrades: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> None:
        replica = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                lines = []
                while (line := self.rfile.readline()) not in (b"\r\n", b""):
                    lines.append(line.decode().rstrip("\r\n"))
                headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
                replica.headers.append(headers)
                replica.upgrades += 1
                if replica.full:
                    self.wfile.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 10\r\n"
                                     b"Content-Length: 24\r\nConnection: close\r\n\r\ngateway at capacity: 2/2")
                    return
                self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                 b"Sec-WebSocket-Accept: x\r\n\r\n")
                self.wfile.flush()
                while data := self.request.recv(4096):
                    self.request.sendall(data)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((self.address, self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _open_stream(port: int) -> tuple[str, bytes]:
    """A Media Streams upgrade through the proxy: its status line, and what came back of b'ping'."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /media?token=t HTTP/1.1\r\nHost: voice.example.test\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        status = reply.split(b"\r\n", 1)[0].decode()
        if " 101 " not in status:
            return status, reply.split(b"\r\n\r\n", 1)[-1]
        sock.sendall(b"ping")
        return status, sock.recv(4)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, list[_FakeGateway]]]:
    """deploy/compose/nginx.conf, as is but for its addresses, before two replicas named `gateway`."""
    assert NGINX is not None
    root = tmp_path_factory.mktemp("compose-nginx")
    port = _free_port("127.0.0.2")
    gateways = [_FakeGateway("127.0.0.2", port), _FakeGateway("127.0.0.3", port)]
    dns = _FakeDockerDns([g.address for g in gateways])
    listen = _free_port("127.0.0.1")
    text = NGINX_CONF.read_text()
    for old, new in [
        ("resolver 127.0.0.11 ", f"resolver 127.0.0.1:{dns.port} "),
        ("set $gateways gateway:8001;", f"set $gateways gateway:{port};"),
        ("listen 8001;", f"listen 127.0.0.1:{listen};"),
        ("error_log /dev/stderr warn;", f"error_log {root}/error.log info;\npid {root}/nginx.pid;"),
        ("access_log /dev/stdout;", f"access_log {root}/access.log;\n" + "".join(
            f"    {kind}_temp_path {root}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))),
    ]:
        assert text.count(old) == 1, f"deploy/compose/nginx.conf no longer has {old!r}"
        text = text.replace(old, new)
    (root / "nginx.conf").write_text(text)
    for gateway in gateways:
        gateway.start()
    dns.start()
    proc = subprocess.Popen([NGINX, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", listen)) != 0:
            assert proc.poll() is None, (root / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.05)
        yield listen, gateways
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        dns.close()
        for gateway in gateways:
            gateway.stop()


def _reset(gateways: list[_FakeGateway], *full: bool) -> None:
    for gateway, is_full in zip(gateways, full, strict=True):
        gateway.full, gateway.upgrades = is_full, 0
        gateway.headers.clear()


@needs_nginx
def test_proxy_spreads_new_streams_over_every_replica(proxied: tuple[int, list[_FakeGateway]]) -> None:
    port, gateways = proxied
    _reset(gateways, False, False)
    for _ in range(24):
        assert _open_stream(port) == ("HTTP/1.1 101 Switching Protocols", b"ping")
    # nginx starts each stream at a random one of the name's addresses: both get some (1 - 2^-23).
    assert all(g.upgrades > 0 for g in gateways), [g.upgrades for g in gateways]
    headers = gateways[0].headers[0]
    assert headers["upgrade"] == "websocket" and headers["connection"].lower() == "upgrade"
    assert headers["x-forwarded-for"] == "127.0.0.1" and headers["host"] == "voice.example.test"


@needs_nginx
def test_proxy_hands_a_refused_stream_to_another_replica(proxied: tuple[int, list[_FakeGateway]]) -> None:
    port, gateways = proxied
    _reset(gateways, True, False)  # the first replica is full (or draining)
    for _ in range(12):
        assert _open_stream(port) == ("HTTP/1.1 101 Switching Protocols", b"ping")
    assert gateways[1].upgrades == 12


@needs_nginx
def test_proxy_passes_the_refusal_on_when_every_replica_is_full(proxied: tuple[int, list[_FakeGateway]]) -> None:
    port, gateways = proxied
    _reset(gateways, True, True)
    status, body = _open_stream(port)
    assert status == "HTTP/1.1 503 Service Unavailable" and body == b"gateway at capacity: 2/2"
    assert [g.upgrades for g in gateways] == [1, 1]  # each tried once
