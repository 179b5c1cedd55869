"""deploy/nginx/relayx.conf rendered for loopback ports and run by Debian's nginx, unprivileged.

The production file is an `http { }`-level include naming its gateways and backend by host; a test
swaps those `server` lines for 127.0.0.1 ports and wraps the file in a main configuration whose pid,
logs and temporary files live in a folder of its own (`nginx -p DIR -c DIR/nginx.conf`, no daemon).
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "relayx.conf"
NGINX_CANDIDATES = ("/usr/sbin/nginx",)


def nginx_binary() -> str:
    """Debian's nginx (`apt-get install nginx`); a clear failure where it is missing."""
    found = shutil.which("nginx") or next((p for p in NGINX_CANDIDATES if Path(p).exists()), None)
    if found is None:
        raise RuntimeError("nginx not found: apt-get install nginx (scripts/setup.sh)")
    return found


@dataclass(frozen=True)
class Server:
    """One upstream server: a loopback port, and optionally a weight (`least_conn` divides by it)."""

    port: int
    weight: int = 1


def render(*, listen: int, gateways: Sequence[Server], backend_port: int, access_log: Path,
           template: Path = TEMPLATE) -> str:
    """The template with its servers on loopback, its listen port and its access log replaced; each
    server keeps the parameters the template gives its upstream (max_fails, fail_timeout)."""
    text = template.read_text()
    text = _servers(text, "relayx_gateways", gateways)
    text = _servers(text, "relayx_gateway_ready", [Server(g.port) for g in gateways])
    text = _servers(text, "relayx_backend", [Server(backend_port)])
    text, listens = re.subn(r"\n    listen \d+;", f"\n    listen 127.0.0.1:{listen};", text)
    text, logs = re.subn(r"access_log \S+ relayx_upstreams;", f"access_log {access_log} relayx_upstreams;", text)
    assert listens == 1 and logs == 1, "deploy/nginx/relayx.conf no longer has one listen and one access_log"
    return text


def _servers(text: str, upstream: str, servers: Sequence[Server]) -> str:
    block = re.search(rf"\nupstream {upstream} \{{\n(.*?)\n\}}", text, re.DOTALL)
    assert block is not None, f"no upstream {upstream} in the template"
    body = block.group(1)
    first = re.search(r"^    server \S+?(?P<params>( [^;]*)?);$", body, re.MULTILINE)
    assert first is not None, f"upstream {upstream} lists no server"
    params = first.group("params")
    kept = [line for line in body.split("\n") if not line.startswith("    server ")]
    lines = [f"    server 127.0.0.1:{s.port}{f' weight={s.weight}' if s.weight != 1 else ''}{params};" for s in servers]
    return text[:block.start(1)] + "\n".join(kept + lines) + text[block.end(1):]


MAIN = """worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    include {root}/relayx.conf;
}}
"""


def write_config(root: Path, site: str) -> Path:
    """The main configuration around `site` (the rendered template) in `root`; returns its path."""
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    (root / "relayx.conf").write_text(site)
    main = root / "nginx.conf"
    main.write_text(MAIN.format(root=root))
    return main


def check(root: Path, main: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on the configuration: its exit code and what it said."""
    return subprocess.run([nginx_binary(), "-t", "-p", str(root), "-c", str(main)],
                          check=False, capture_output=True, text=True, timeout=30)


@contextmanager
def running(root: Path, main: Path, port: int, *, timeout_s: float = 15) -> Iterator[subprocess.Popen[bytes]]:
    """nginx in the foreground until the block ends; yields once it accepts connections on `port`."""
    checked = check(root, main)
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen([nginx_binary(), "-p", str(root), "-c", str(main), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=(root / "stderr.log").open("wb"))
    try:
        deadline = time.monotonic() + timeout_s
        while not _accepts(port):
            assert proc.poll() is None, (root / "error.log").read_text()
            assert time.monotonic() < deadline, f"nginx did not listen on {port} in {timeout_s} s"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast shutdown: the test's streams are over
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
