"""Past one machine: receivers, workers, Redis and PostgreSQL on hosts of their own, and a worker host lost mid-run.

Nine hosts on one machine (tests/netns.py), each its own network namespace on
one bridge: nginx on `lb` (deploy/nginx.local.conf) balancing an intake and an api
gunicorn on each of `web1` and `web2`; a persist and a submit worker on each of
`work1` and `work2`; the maintenance worker and the scheduler on `ops`; Redis
(append-only file, fsync always) on `redis`; PostgreSQL on `db`; the emulator as
Runware on `runware`. The test process is one more host on the bridge.

Sender threads post results for external tasks through the balancer, again until a
2xx, as Runware does; images go in through the API, and their results come back by
webhook through the balancer too. Mid-run the worker host whose drain is storing
deliveries is cut off (its link down), then its processes are killed. In the end
every acknowledged delivery is stored once, every submitted task holds the one
final state the emulator gave it, and the stored spend is the emulator's.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import pytest
import redis
import requests
import sqlalchemy as sa

from deploy.launch import find_nginx
from deploy.launch import nginx_argv
from deploy.launch import render_nginx
from store.migrate import upgrade
from tests.acknowledged import Sender
from tests.acknowledged import assert_exactly_once
from tests.conftest import TOKENS
from tests.netns import Network
from tests.netns import unavailable
from tests.pgreplica import Cluster
from tests.pgreplica import cluster_root
from tests.pgreplica import create_database
from tests.pgreplica import required_binaries
from tests.sentinel import MASTER
from tests.sentinel import Place
from tests.sentinel import SentinelCluster
from tests.submitting import EMULATOR_KEY
from tests.submitting import data_uri
from tests.submitting import rows
from tests.support import SWEEP_EVERY_SECOND
from tests.support import Service
from tests.support import children
from tests.support import wait_for
from workers.queues import DELIVERY_GROUP
from workers.queues import DELIVERY_STREAM

# One at a time, and not beside the loopback failover test: each runs a dozen servers on this machine's cores.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hosts"), pytest.mark.timeout(300)]

INTAKE_PORT, API_PORT, FRONT_PORT, RUNWARE_PORT = 8001, 8002, 8080, 8010
IMAGES = 30
ACKED_BEFORE_CUT = 150
ACKED_AFTER_CUT = 300
COLOURS = ["red", "green", "blue", "white", "black", "yellow", "purple", "orange", "grey", "pink"]


@pytest.fixture
def network():
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    net = Network()
    yield net
    net.close()


class Hosts:
    """The processes of every host, stopped together at the end."""

    def __init__(self, net: Network, tmp_path: Path):
        self.net, self.tmp_path = net, tmp_path
        self.processes: dict[str, list[Service]] = {}

    def run(self, host: str, argv: list[str], env: dict[str, str], name: str) -> Service:
        service = Service(self.net.on(host, argv), env, name=f"{host}-{name}").start()
        self.processes.setdefault(host, []).append(service)
        return service

    def gunicorn(self, host: str, app: str, kind: str, port: int, env: dict[str, str]) -> Service:
        return self.run(host, [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", app],
                        {**env, "HOST": self.net.address(self.net.hosts[host]), "PORT": str(port),
                         "APP_KIND": kind, "WEB_CONCURRENCY": "2"}, kind)

    @property
    def front(self) -> str:
        """The balancer's URL (nginx on `lb`)."""
        return f"http://{self.net.address(self.net.hosts['lb'])}:{FRONT_PORT}"

    def web_tier(self, env: dict[str, str], webs: tuple[str, ...] = ("web1", "web2")) -> None:
        """An intake and an api gunicorn on each of `webs`, and nginx on `lb` balancing them, all answering."""
        nginx = find_nginx()
        if nginx is None:
            pytest.skip("nginx is not installed (Debian: apt-get install nginx)")
        address = {web: self.net.address(self.net.hosts[web]) for web in webs}
        for web in webs:
            self.gunicorn(web, "wsgi:intake", "intake", INTAKE_PORT, env)
            self.gunicorn(web, "wsgi:app", "api", API_PORT, env)
        for web in webs:
            for port in (INTAKE_PORT, API_PORT):
                wait_for(lambda: answers(f"http://{address[web]}:{port}/healthz"), timeout=60,
                         what=f"gunicorn on {web}:{port}")
        conf = render_nginx(self.front.removeprefix("http://"), [f"{address[web]}:{INTAKE_PORT}" for web in webs],
                            [f"{address[web]}:{API_PORT}" for web in webs], nginx_dir())
        self.run("lb", nginx_argv(nginx, conf), {}, "nginx")
        wait_for(lambda: answers(f"{self.front}/healthz"), timeout=30, what="nginx on its host")

    def worker(self, host: str, queue: str, env: dict[str, str]) -> Service:
        return self.run(host, [sys.executable, "-m", "workers", queue], env, queue)

    def kill(self, host: str) -> None:
        for service in self.processes.get(host, []):
            service.kill()

    def stop(self) -> None:
        for services in reversed(list(self.processes.values())):
            for service in reversed(services):
                service.stop(timeout=15)


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def start_database(cluster: Cluster) -> str:
    """The cluster started, with the database DATABASE at the migration head; its URL."""
    cluster.init().start()
    create_database(cluster)
    url = cluster.url()
    upgrade(url)
    return url


def submit(front: str, images: list[str]) -> list[str]:
    response = requests.post(f"{front}/api/captions", json={"images": images},
                             headers={"Authorization": f"Bearer {TOKENS['SUBMIT_TOKENS']}"}, timeout=30)
    assert response.status_code == 202, response.text
    return [t["taskUUID"] for t in response.json()["tasks"]]


def test_a_worker_host_lost_mid_run_loses_nothing(network, tmp_path):
    net = network
    address = {name: net.add(name) for name in ("lb", "web1", "web2", "work1", "work2", "ops", "redis", "db",
                                                  "runware")}
    hosts = Hosts(net, tmp_path)
    cluster = Cluster(required_binaries(), cluster_root("pg-multihost-test-"), "db", address=address["db"],
                      on=lambda argv: net.on("db", argv))
    try:
        hosts.run("redis", ["redis-server", "--bind", address["redis"], "--port", "6379", "--protected-mode", "no",
                            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                            "--dir", str(tmp_path)], {}, "redis")
        queue = redis.Redis(host=address["redis"], port=6379, socket_timeout=5)
        wait_for(lambda: _pings(queue), timeout=30, what="Redis on its host")
        database_url = start_database(cluster)
        runware = f"http://{address['runware']}:{RUNWARE_PORT}"
        hosts.run("runware", [sys.executable, "-m", "emulator", "--host", address["runware"], "--port",
                              str(RUNWARE_PORT), "--api-key", EMULATOR_KEY, "--processing-ms", "5", "--seed", "7"],
                  {}, "emulator")
        wait_for(lambda: answers(f"{runware}/_emulator/tasks"), timeout=30, what="the emulator on its host")

        front = hosts.front
        env = {**TOKENS, "APP_ENV": "development", "REDIS_URL": f"redis://{address['redis']}:6379/0",
               "DATABASE_URL": database_url, "RUNWARE_API_URL": f"{runware}/v1", "RUNWARE_API_KEY": EMULATOR_KEY,
               "PUBLIC_URL": front, "SUBMIT_BATCH_SIZE": "5", "RECONCILE_AFTER_SECONDS": "1",
               "RECONCILE_INTERVAL_SECONDS": "2", "PERSIST_STALE_AFTER_MS": "2000"}
        hosts.web_tier(env)

        drains = {work: hosts.worker(work, "persist", env) for work in ("work1", "work2")}
        for work in ("work1", "work2"):
            hosts.worker(work, "submit", env)
        hosts.worker("ops", "maintenance", env)
        hosts.run("ops", [sys.executable, "-m", "workers", "cron", "--schedule", "workers.schedule"], env, "cron")

        sender = Sender(front).start()
        try:
            images = [data_uri(fmt, colour, (12 + i, 9 + i % 5))
                      for i, (fmt, colour) in enumerate((f, c) for f in ("PNG", "JPEG", "WEBP") for c in COLOURS)]
            submitted = submit(front, images[:IMAGES])
            engine = sa.create_engine(database_url)
            # Every image sent on to Runware before the cut: a submission cut off mid-request waits out its lease.
            wait_for(lambda: all(r.status != "queued" for r in rows(engine, submitted).values()), timeout=60,
                     what="every image sent to Runware")
            wait_for(lambda: len(sender.acked) >= ACKED_BEFORE_CUT, timeout=60, what="webhooks acknowledged")
            lost = wait_for(lambda: draining_host(queue, drains), timeout=30, what="a drain storing deliveries")
            net.cut(lost)
            cut_at = len(sender.acked)
            time.sleep(2)  # the host is unreachable, its processes still running
            hosts.kill(lost)
            wait_for(lambda: len(sender.acked) >= cut_at + ACKED_AFTER_CUT, timeout=60,
                     what="webhooks acknowledged after the cut")
        finally:
            sender.stop()

        wait_for(lambda: queue.xlen(DELIVERY_STREAM) == 0, timeout=180, interval=0.5,
                 what="the other worker host to drain the stream, the lost one's pending entries included")
        wait_for(lambda: all(r.status in ("success", "error") for r in rows(engine, submitted).values()),
                 timeout=90, interval=0.5, what="every submitted task in a final state")
        print(f"\nmulti-host: {lost} lost; {len(sender.acked)} webhooks acknowledged ({cut_at} before), refused "
              f"{sender.refused}; {len(submitted)} images submitted")
        assert_exactly_once(engine, sender.acked, sender.attempts)

        truth = {t["taskUUID"]: t for t in requests.get(f"{runware}/_emulator/tasks", timeout=10).json()["tasks"]}
        stored = rows(engine, submitted)
        for task_uuid in submitted:
            row, fact = stored[task_uuid], truth[task_uuid]
            assert row.status == fact["status"], (task_uuid, row.status, fact)
            if fact["status"] == "success":
                assert row.text == fact["result"]["text"]
        spent = sum(Decimal(str(truth[u]["result"]["cost"])) for u in submitted if truth[u]["status"] == "success")
        assert sum(r.cost or 0 for r in stored.values()) == spent > 0, "the stored spend is Runware's, none twice"
        engine.dispose()
    finally:
        hosts.stop()
        cluster.stop()


def draining_host(queue: redis.Redis, drains: dict[str, Service]) -> str | None:
    """The host of the drain that read from the delivery stream last (a consumer is named host:pid, its pid
    that of the RQ work horse its host's persist worker forked)."""
    consumers = sorted(queue.xinfo_consumers(DELIVERY_STREAM, DELIVERY_GROUP), key=lambda c: c["idle"])
    for consumer in consumers:
        pid = int(consumer["name"].decode().rsplit(":", 1)[1])
        for host, drain in drains.items():
            if pid == drain.pid or pid in children(drain.pid):
                return host
    return None


def nginx_dir() -> Path:
    """A folder for nginx's files that its workers (`nobody`, when the master runs as root) may write bodies to."""
    folder = Path(tempfile.mkdtemp(prefix="nginx-multihost-"))
    (folder / "tmp").mkdir()
    folder.chmod(0o755)
    (folder / "tmp").chmod(0o777)
    return folder


def _pings(conn: redis.Redis) -> bool:
    try:
        return conn.ping()
    except redis.RedisError:
        return False


def test_the_redis_primary_host_lost_under_load_fails_over(network, tmp_path):
    """Redis's primary on `redis1` and its replicas on `redis2` and `redis3`, a sentinel on each; with
    REDIS_MIN_REPLICAS_ACK=1, losing the primary's host (link down, then its processes killed) under load
    loses no acknowledged delivery and doubles none, and the senders see only 503s meanwhile. (With one
    replica, the promoted one would have none left to confirm a write, and would answer 503 until the lost
    host came back.)"""
    if not shutil.which("redis-sentinel"):
        pytest.skip("redis-sentinel is not installed (Debian: apt-get install redis-sentinel)")
    net = network
    address = {name: net.add(name) for name in ("lb", "web1", "web2", "work", "redis1", "redis2", "redis3",
                                                  "db")}
    places = tuple(Place(address[host], lambda argv, host=host: net.on(host, argv))
                   for host in ("redis1", "redis2", "redis3"))
    hosts = Hosts(net, tmp_path)
    redis_cluster = SentinelCluster(places, replicas=2)
    cluster = Cluster(required_binaries(), cluster_root("pg-failover-test-"), "db", address=address["db"],
                      on=lambda argv: net.on("db", argv))
    try:
        redis_cluster.start()
        env = {**TOKENS, "APP_ENV": "development", "REDIS_SENTINELS": redis_cluster.addresses,
               "REDIS_SENTINEL_MASTER": MASTER, "REDIS_MIN_REPLICAS_ACK": "1",
               "DATABASE_URL": start_database(cluster), "PERSIST_STALE_AFTER_MS": "1000"}
        hosts.web_tier(env)
        schedule = tmp_path / "sweep_schedule.py"
        schedule.write_text(SWEEP_EVERY_SECOND)
        hosts.worker("work", "persist", env)
        hosts.run("work", [sys.executable, "-m", "workers", "cron", "--schedule", str(schedule)], env, "cron")

        sender = Sender(hosts.front).start()
        try:
            wait_for(lambda: len(sender.acked) >= ACKED_BEFORE_CUT, timeout=60, what="webhooks acknowledged")
            net.cut("redis1")
            lost_at = time.monotonic()
            time.sleep(2)  # the host is unreachable, its processes still running
            redis_cluster.kill_primary()
            redis_cluster.sentinels[0].close()
            promoted = wait_for(lambda: redis_cluster.promoted(redis_cluster.sentinels[1:]), timeout=60,
                                what="the other two sentinels to promote a replica")
            switch_s = time.monotonic() - lost_at
            promoted_at = len(sender.acked)
            wait_for(lambda: len(sender.acked) >= promoted_at + ACKED_AFTER_CUT, timeout=60,
                     what="webhooks acknowledged by the new primary")
        finally:
            sender.stop()
        new_primary = redis.Redis(host=promoted.address, port=promoted.port)
        wait_for(lambda: new_primary.xlen(DELIVERY_STREAM) == 0, timeout=180, interval=0.5,
                 what="the new primary's stream to drain")
        print(f"\nmulti-host failover: switch {switch_s:.1f} s, {len(sender.acked)} acknowledged "
              f"({promoted_at} before the promotion); refused {sender.refused}")
        assert set(sender.refused) <= {"503"}, "only 503s while there is no primary: no hang, no other error"
        assert sender.refused, "the senders saw the switch"
        engine = sa.create_engine(cluster.url())
        assert_exactly_once(engine, sender.acked, sender.attempts)
        engine.dispose()
    finally:
        hosts.stop()
        redis_cluster.close()
        cluster.stop()
