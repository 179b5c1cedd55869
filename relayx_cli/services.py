"""Starting the two services as child processes and waiting until they answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from shared.settings import Settings


class Services:
    """The backend and the gateway, each its own uvicorn process (as in production)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log_files: list[Path] = []

    def start(self, *, backend: bool = True, gateway: bool = True, log_level: str = "warning") -> None:
        env = dict(os.environ)
        env.setdefault("RELAYX_API_KEY", self.settings.api_key)  # one key for both, generated once
        logs = self.settings.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_files = []
        for enabled, app, port in (
            (backend, "backend.main:create_app", self.settings.backend_port),
            (gateway, "voice_gateway.main:create_app", self.settings.gateway_port),
        ):
            if enabled:
                log_path = logs / f"{app.split('.')[0]}.log"
                self.log_files.append(log_path)
                with log_path.open("ab") as log_file:  # the child keeps its own handle
                    self.processes.append(subprocess.Popen(
                        [sys.executable, "-m", "uvicorn", app, "--factory", "--host", "0.0.0.0", "--port", str(port),
                         "--log-level", log_level, "--ws", "websockets-sansio"],
                        env=env, stdout=log_file, stderr=subprocess.STDOUT,
                    ))

    def wait_healthy(self, *, timeout_s: float = 600, progress: Callable[[str], None] | None = None) -> None:
        """Poll /health on each service with a deadline; the gateway answers once its models are warm."""
        urls = []
        if any("backend.main" in " ".join(map(str, p.args)) for p in self.processes):  # type: ignore[arg-type]
            urls.append(("backend", f"http://127.0.0.1:{self.settings.backend_port}/health"))
        if any("voice_gateway" in " ".join(map(str, p.args)) for p in self.processes):  # type: ignore[arg-type]
            urls.append(("gateway", f"http://127.0.0.1:{self.settings.gateway_port}/health"))
        deadline = time.monotonic() + timeout_s
        pending = dict(urls)
        started = time.monotonic()
        while pending:
            for proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"a service exited with code {proc.returncode}")
            for name, url in list(pending.items()):
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        del pending[name]
                        if progress:
                            progress(f"{name} ready ({time.monotonic() - started:.0f} s)")
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"services not healthy after {timeout_s:.0f} s: {', '.join(pending)}")
            time.sleep(0.3)

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def wait(self) -> None:
        """Block until Ctrl-C or a service exits."""
        try:
            while all(p.poll() is None for p in self.processes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
