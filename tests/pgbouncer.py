"""A private PgBouncer (Debian's) in transaction pooling, in front of the tests' PostgreSQL server.

It listens on a loopback port of its own and hands every database of the
server, by name, to at most POOL_SIZE server connections, so that clients
share them transaction by transaction. PgBouncer refuses to run as root: as
root it is started as `nobody`, which then owns its folder.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import free_port
from tests.support import wait_for

POOL_SIZE = 2
"""Server connections per database and user: fewer than the clients, so that they share them."""


class PgBouncer:
    def __init__(self, server_url: str):
        self.server = sa.engine.make_url(server_url)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pgbouncer-test-"))
        self.process: subprocess.Popen | None = None

    def url(self, database_url: str) -> str:
        """`database_url` (on the tests' server) through this PgBouncer."""
        return sa.engine.make_url(database_url).set(host="127.0.0.1", port=self.port) \
            .render_as_string(hide_password=False)

    def start(self) -> PgBouncer:
        user = self.server.username or "postgres"
        (self.dir / "users.txt").write_text(f'"{user}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            f"[databases]\n* = host={self.server.host or '127.0.0.1'} port={self.server.port or 5432}\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'users.txt'}\npool_mode = transaction\n"
            f"default_pool_size = {POOL_SIZE}\nmax_client_conn = 200\nlogfile = {self.dir / 'pgbouncer.log'}\n")
        argv = ["pgbouncer", str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            argv[1:1] = ["-u", "nobody"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self._listening, timeout=10, what="PgBouncer to listen")
        return self

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"pgbouncer exited: {self.log()[-2000:]}")
        return f"listening on 127.0.0.1:{self.port}" in self.log()

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pgbouncer(postgres_url):
    if not shutil.which("pgbouncer"):
        if os.environ.get("REQUIRE_PGBOUNCER") == "1":
            pytest.fail("pgbouncer is not installed and REQUIRE_PGBOUNCER=1")
        pytest.skip("pgbouncer is not installed (Debian/Ubuntu: apt-get install pgbouncer)")
    bouncer = PgBouncer(postgres_url).start()
    yield bouncer
    bouncer.stop()
