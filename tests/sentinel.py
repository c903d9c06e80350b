"""A Redis primary, its replica and three sentinels, for the failover tests.

Both Redis servers run with the project's deploy/redis.conf (append-only file,
fsync always); the sentinels watch the primary under MASTER with short timings,
so a primary killed with SIGKILL is replaced by its replica within seconds. They
run on loopback ports, or on hosts of their own (a `Place` each: tests/netns.py).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support import ProjectRedisServer
from tests.support import free_port
from tests.support import wait_for

MASTER = "captions"
"""The master name the sentinels watch (REDIS_SENTINEL_MASTER)."""

DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def on_subnet(address: str) -> bool:
    """Whether a server at `address` serves other hosts (of a private test subnet), which Redis without a
    password refuses in its protected mode, which is then turned off."""
    return address != "127.0.0.1"


@dataclass(frozen=True)
class Place:
    """Where a server runs: the address it listens on, and how its command runs there."""

    address: str = "127.0.0.1"
    on: Callable[[list[str]], list[str]] = list


LOOPBACK = (Place(), Place(), Place())


class WatchedServer(ProjectRedisServer):
    """A redis-server with a copy of the project's config (Sentinel rewrites the file of a server it
    reconfigures), replicating `primary` when given."""

    def __init__(self, primary: ProjectRedisServer | None = None, place: Place = Place()):
        super().__init__(address=place.address, on=place.on)
        self.config_file = Path(shutil.copy(self.config_file, Path(self.dir) / "redis.conf"))
        self.primary = primary

    def argv(self) -> list[str]:
        follow = ["--replicaof", self.primary.address, str(self.primary.port)] if self.primary else []
        unprotected = ["--protected-mode", "no"] if on_subnet(self.address) else []
        return [*super().argv(), *follow, *unprotected]


class Sentinel:
    """One redis-sentinel process watching `primary` under MASTER (quorum 2)."""

    def __init__(self, primary: WatchedServer, place: Place = Place()):
        self.port = free_port()
        self.address, self.on = place.address, place.on
        self.dir = Path(tempfile.mkdtemp(prefix="sentinel-test-"))
        (self.dir / "sentinel.conf").write_text(
            f"port {self.port}\nbind {self.address}\ndir {self.dir}\n"
            + ("protected-mode no\n" if on_subnet(self.address) else "") +
            f"sentinel monitor {MASTER} {primary.address} {primary.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 1\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.dir / "sentinel.log", "ab") as log:
            self.process = subprocess.Popen(self.on(["redis-sentinel", str(self.dir / "sentinel.conf")]),
                                            stdout=log, stderr=subprocess.STDOUT)

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.address, port=self.port, socket_timeout=2, decode_responses=True)

    def knows_everyone(self) -> bool:
        """It answers, sees the replica and both other sentinels."""
        try:
            state = self.client().sentinel_master(MASTER)
        except redis.RedisError:
            return False
        return state["num-slaves"] >= 1 and state["num-other-sentinels"] >= 2

    def primary_at(self) -> tuple[str, int]:
        address, port = self.client().sentinel_get_master_addr_by_name(MASTER)
        return address, int(port)

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelCluster:
    """The primary and `replicas` replicas at the first of `places`, a sentinel at each (three);
    `kill_primary()` is the primary lost."""

    def __init__(self, places: tuple[Place, Place, Place] = LOOPBACK, replicas: int = 1):
        if not shutil.which("redis-sentinel"):
            raise RuntimeError("redis-sentinel is not on PATH (Debian/Ubuntu: apt-get install redis-sentinel)")
        self.primary = WatchedServer(place=places[0])
        self.replicas = [WatchedServer(self.primary, place=place) for place in places[1:1 + replicas]]
        self.sentinels = [Sentinel(self.primary, place) for place in places]

    @property
    def addresses(self) -> str:
        """REDIS_SENTINELS for the service."""
        return ",".join(f"{s.address}:{s.port}" for s in self.sentinels)

    def start(self) -> SentinelCluster:
        self.primary.start()
        for replica in self.replicas:
            replica.start()
            conn = redis.Redis(host=replica.address, port=replica.port, decode_responses=True)
            wait_for(lambda conn=conn: conn.info("replication")["master_link_status"] == "up", timeout=30,
                     what="the replica to sync")
        for sentinel in self.sentinels:
            sentinel.start()
        wait_for(lambda: all(s.knows_everyone() for s in self.sentinels), timeout=30,
                 what="the sentinels to find the replica and each other")
        return self

    def kill_primary(self) -> None:
        self.primary.stop(kill=True)

    def promoted(self, sentinels: list[Sentinel] | None = None) -> WatchedServer | None:
        """The replica every sentinel (of `sentinels`, default all) names as the primary, once it says it is
        one."""
        try:
            named = {s.primary_at() for s in sentinels or self.sentinels}
            for replica in self.replicas:
                if named == {(replica.address, replica.port)}:
                    conn = redis.Redis(host=replica.address, port=replica.port, decode_responses=True)
                    return replica if conn.info("replication")["role"] == "master" else None
        except redis.RedisError:
            pass
        return None

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.close()
        for replica in self.replicas:
            replica.close()
        self.primary.close()
