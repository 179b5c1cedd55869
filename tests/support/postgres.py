"""A throwaway PostgreSQL cluster started with this machine's initdb/pg_ctl."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise RuntimeError(f"{name} not found: install PostgreSQL 15's server (postgresql-15)")


class PostgresCluster:
    """A private cluster on a free port; `stop()` and `start()` take it down and bring it back
    (the outage tests), keeping its data."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="relayx-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.url = f"postgresql://relayx@127.0.0.1:{self.port}/postgres"
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: hand the directory to an unprivileged user.
            user = "postgres" if _user_exists("postgres") else "nobody"
            shutil.chown(self.root, user=user)
            self._run_as = ["runuser", "-u", user, "--"]
        subprocess.run(
            [*self._run_as, _pg_bin("initdb"), "-D", str(self.data), "-U", "relayx", "--auth=trust", "-E", "UTF8"],
            check=True, capture_output=True,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        subprocess.run(
            [*self._run_as, _pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
             "-w", "start"],
            check=True, capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop`: `fast` ends open connections (an outage), `immediate` is a crash."""
        subprocess.run(
            [*self._run_as, _pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
            check=False, capture_output=True,
        )

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Start a private cluster on a free port; yield its admin URL; stop and delete it afterwards."""
    cluster = PostgresCluster()
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.remove()


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def fresh_database(admin_url: str, name: str) -> str:
    """Create an empty database in the cluster and return its URL (one per test: no leaks between).

    Synchronous (its own loop in a worker thread) so that plain fixtures can call it.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'drop database if exists "{name}"')
            await conn.execute(f'create database "{name}"')
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"
