"""A private PostgreSQL primary and its streaming replica (Debian's server binaries), for DATABASE_READ_URL.

Both clusters live in a temporary folder, listen on loopback ports of their own
and trust local connections. The replica is a `pg_basebackup -R` of the
primary: a hot standby that replays the primary's WAL as it streams in. The
server refuses to run as root: as root the clusters belong to, and run as, the
`postgres` user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import free_port

DATABASE = "captions"


def server_binaries() -> Path | None:
    """The folder of initdb, pg_ctl and pg_basebackup, or None where PostgreSQL's server is not installed."""
    found = shutil.which("pg_config")
    if found:
        folder = Path(subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (folder / "initdb").exists():
            return folder
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


class Cluster:
    """One PostgreSQL cluster in `root`/`name` on a free port; `start()` after `init()` or `copy_of()`.

    It listens on `address`; `on(argv)` is how its tools run (on another host: tests/netns.py).
    """

    def __init__(self, binaries: Path, root: Path, name: str, address: str = "127.0.0.1",
                 on: Callable[[list[str]], list[str]] = list):
        self.binaries, self.dir, self.port = binaries, root / name, free_port()
        self.log = root / f"{name}.log"
        self.address, self.on = address, on

    def run(self, tool: str, *args: str) -> None:
        argv = [str(self.binaries / tool), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(self.on(argv), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{tool} failed: {done.stdout[-1000:]}{done.stderr[-1000:]}"

    def init(self) -> Cluster:
        self.run("initdb", "-D", str(self.dir), "-U", "postgres", "--auth=trust", "--no-sync")
        if self.address != "127.0.0.1":  # trusted from the hosts of its own subnet too
            with open(self.dir / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet trust\n")
        return self

    def copy_of(self, primary: Cluster) -> Cluster:
        """A hot standby streaming from `primary`."""
        self.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                 "-D", str(self.dir), "-R", "--checkpoint=fast", "--no-sync")
        return self

    def start(self) -> Cluster:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses={self.address} -c fsync=off"
        self.run("pg_ctl", "-D", str(self.dir), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def stop(self) -> None:
        if (self.dir / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.dir), "-m", "immediate", "-w", "stop")

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql+psycopg://postgres@{self.address}:{self.port}/{database}"


def required_binaries() -> Path:
    """server_binaries(), or the test skipped (failed with REQUIRE_POSTGRES=1) where they are not installed."""
    binaries = server_binaries()
    if binaries is None:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup) are not installed "
                        "and REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL's server binaries are not installed (Debian: apt-get install postgresql)")
    return binaries


def cluster_root(prefix: str) -> Path:
    """A temporary folder for clusters, which the server (as `postgres` under root) may write."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        os.chown(root, postgres.pw_uid, postgres.pw_gid)
    return root


def create_database(cluster: Cluster) -> None:
    """The database DATABASE on `cluster`."""
    admin = sa.create_engine(cluster.url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {DATABASE}"))
    admin.dispose()


@pytest.fixture
def replicated():
    """(primary, replica), with the database DATABASE made on the primary (and so on the replica)."""
    binaries = required_binaries()
    root = cluster_root("pg-replica-test-")
    primary = Cluster(binaries, root, "primary")
    replica = Cluster(binaries, root, "replica")
    try:
        primary.init().start()
        create_database(primary)
        replica.copy_of(primary).start()
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()
        shutil.rmtree(root, ignore_errors=True)
