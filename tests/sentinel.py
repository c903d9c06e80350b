"""A Redis primary, its replica and three sentinels on loopback ports, for the failover test.

Both Redis servers run with the project's deploy/redis.conf (append-only file,
fsync always); the sentinels watch the primary under MASTER with short timings,
so a primary killed with SIGKILL is replaced by its replica within seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import redis

from tests.support import ProjectRedisServer
from tests.support import free_port
from tests.support import wait_for

MASTER = "captions"
"""The master name the sentinels watch (REDIS_SENTINEL_MASTER)."""

DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class WatchedServer(ProjectRedisServer):
    """A redis-server with a copy of the project's config (Sentinel rewrites the file of a server it
    reconfigures), replicating `primary` when given."""

    def __init__(self, primary: ProjectRedisServer | None = None):
        super().__init__()
        self.config_file = Path(shutil.copy(self.config_file, Path(self.dir) / "redis.conf"))
        self.primary = primary

    def argv(self) -> list[str]:
        follow = ["--replicaof", "127.0.0.1", str(self.primary.port)] if self.primary else []
        return [*super().argv(), *follow]


class Sentinel:
    """One redis-sentinel process watching `primary` under MASTER (quorum 2)."""

    def __init__(self, primary: WatchedServer):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sentinel-test-"))
        (self.dir / "sentinel.conf").write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 1\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.dir / "sentinel.log", "ab") as log:
            self.process = subprocess.Popen(["redis-sentinel", str(self.dir / "sentinel.conf")],
                                            stdout=log, stderr=subprocess.STDOUT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def knows_everyone(self) -> bool:
        """It answers, sees the replica and both other sentinels."""
        try:
            state = self.client().sentinel_master(MASTER)
        except redis.RedisError:
            return False
        return state["num-slaves"] >= 1 and state["num-other-sentinels"] >= 2

    def primary_port(self) -> int:
        _, port = self.client().sentinel_get_master_addr_by_name(MASTER)
        return int(port)

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelCluster:
    """The primary, one replica and three sentinels; `kill_primary()` is the primary's host lost."""

    def __init__(self):
        if not shutil.which("redis-sentinel"):
            raise RuntimeError("redis-sentinel is not on PATH (Debian/Ubuntu: apt-get install redis-sentinel)")
        self.primary = WatchedServer()
        self.replica = WatchedServer(self.primary)
        self.sentinels = [Sentinel(self.primary) for _ in range(3)]

    @property
    def addresses(self) -> str:
        """REDIS_SENTINELS for the service."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def start(self) -> SentinelCluster:
        self.primary.start()
        self.replica.start()
        replica = redis.Redis(port=self.replica.port, decode_responses=True)
        wait_for(lambda: replica.info("replication")["master_link_status"] == "up", timeout=30,
                 what="the replica to sync")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_for(lambda: all(s.knows_everyone() for s in self.sentinels), timeout=30,
                 what="the sentinels to find the replica and each other")
        return self

    def kill_primary(self) -> None:
        self.primary.stop(kill=True)

    def promoted(self) -> bool:
        """Every sentinel names the replica as the primary, and it says it is one."""
        try:
            role = redis.Redis(port=self.replica.port, decode_responses=True).info("replication")["role"]
            return role == "master" and all(s.primary_port() == self.replica.port for s in self.sentinels)
        except redis.RedisError:
            return False

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.close()
        self.replica.close()
        self.primary.close()
