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


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Start a private cluster on a free port; yield its admin URL; stop and delete it afterwards."""
    root = Path(tempfile.mkdtemp(prefix="relayx-pg-"))
    data = root / "data"
    port = _free_port()
    env = dict(os.environ)
    run_as: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: hand the directory to an unprivileged user.
        user = "postgres" if _user_exists("postgres") else "nobody"
        shutil.chown(root, user=user)
        run_as = ["runuser", "-u", user, "--"]
    subprocess.run(
        [*run_as, _pg_bin("initdb"), "-D", str(data), "-U", "relayx", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        env=env,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
    subprocess.run(
        [*run_as, _pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
        check=True,
        capture_output=True,
        env=env,
    )
    try:
        yield f"postgresql://relayx@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*run_as, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], check=False, capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


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
