"""Past one machine: receivers, workers, Redis and PostgreSQL on hosts of their own, and a worker host lost mid-run.

Eight hosts on one machine (tests/netns.py), each its own network namespace on
one bridge: nginx on `lb` (deploy/nginx.local.conf) balancing an intake and an api
gunicorn on each of `web1` and `web2`; a persist and a submit worker on each of
`work1` and `work2`, with the maintenance worker and the scheduler on `work2`; Redis
(append-only file, fsync always) on `redis`; PostgreSQL on `db`; the emulator as
Runware on `runware`. The test process is one more host on the bridge.

Sender threads post results for external tasks through the balancer, again until a
2xx, as Runware does; images go in through the API, and their results come back by
webhook through the balancer too. Mid-run `work1` is cut off (its link down), then
its processes are killed. In the end every acknowledged delivery is stored once,
every submitted task holds the one final state the emulator gave it, and the stored
spend is the emulator's.
"""

from __future__ import annotations

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
from tests.submitting import EMULATOR_KEY
from tests.submitting import data_uri
from tests.submitting import rows
from tests.support import Service
from tests.support import wait_for
from workers.queues import DELIVERY_STREAM

pytestmark = pytest.mark.slow

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


def submit(front: str, images: list[str]) -> list[str]:
    response = requests.post(f"{front}/api/captions", json={"images": images},
                             headers={"Authorization": f"Bearer {TOKENS['SUBMIT_TOKENS']}"}, timeout=30)
    assert response.status_code == 202, response.text
    return [t["taskUUID"] for t in response.json()["tasks"]]


def test_a_worker_host_lost_mid_run_loses_nothing(network, tmp_path):
    net = network
    address = {name: net.add(name) for name in ("lb", "web1", "web2", "work1", "work2", "redis", "db", "runware")}
    hosts = Hosts(net, tmp_path)
    cluster = Cluster(required_binaries(), cluster_root("pg-multihost-test-"), "db", address=address["db"],
                      on=lambda argv: net.on("db", argv))
    try:
        hosts.run("redis", ["redis-server", "--bind", address["redis"], "--port", "6379", "--protected-mode", "no",
                            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                            "--dir", str(tmp_path)], {}, "redis")
        queue = redis.Redis(host=address["redis"], port=6379, socket_timeout=5)
        wait_for(lambda: _pings(queue), timeout=30, what="Redis on its host")
        cluster.init().start()
        create_database(cluster)
        database_url = cluster.url()
        upgrade(database_url)
        runware = f"http://{address['runware']}:{RUNWARE_PORT}"
        hosts.run("runware", [sys.executable, "-m", "emulator", "--host", address["runware"], "--port",
                              str(RUNWARE_PORT), "--api-key", EMULATOR_KEY, "--processing-ms", "5", "--seed", "7"],
                  {}, "emulator")
        wait_for(lambda: answers(f"{runware}/_emulator/tasks"), timeout=30, what="the emulator on its host")

        front = f"http://{address['lb']}:{FRONT_PORT}"
        env = {**TOKENS, "APP_ENV": "development", "REDIS_URL": f"redis://{address['redis']}:6379/0",
               "DATABASE_URL": database_url, "RUNWARE_API_URL": f"{runware}/v1", "RUNWARE_API_KEY": EMULATOR_KEY,
               "PUBLIC_URL": front, "SUBMIT_BATCH_SIZE": "5", "RECONCILE_AFTER_SECONDS": "1",
               "RECONCILE_INTERVAL_SECONDS": "2", "PERSIST_STALE_AFTER_MS": "2000"}
        for web in ("web1", "web2"):
            hosts.gunicorn(web, "wsgi:intake", "intake", INTAKE_PORT, env)
            hosts.gunicorn(web, "wsgi:app", "api", API_PORT, env)
        for web in ("web1", "web2"):
            for port in (INTAKE_PORT, API_PORT):
                wait_for(lambda: answers(f"http://{address[web]}:{port}/healthz"), timeout=60,
                         what=f"gunicorn on {web}:{port}")
        nginx = find_nginx()
        if nginx is None:
            pytest.skip("nginx is not installed (Debian: apt-get install nginx)")
        conf = render_nginx(f"{address['lb']}:{FRONT_PORT}",
                            [f"{address[web]}:{INTAKE_PORT}" for web in ("web1", "web2")],
                            [f"{address[web]}:{API_PORT}" for web in ("web1", "web2")], nginx_dir())
        hosts.run("lb", nginx_argv(nginx, conf), {}, "nginx")
        wait_for(lambda: answers(f"{front}/healthz"), timeout=30, what="nginx on its host")

        drains = {work: hosts.worker(work, "persist", env) for work in ("work1", "work2")}
        for work in ("work1", "work2"):
            hosts.worker(work, "submit", env)
        hosts.worker("work2", "maintenance", env)
        hosts.run("work2", [sys.executable, "-m", "workers", "cron", "--schedule", "workers.schedule"], env, "cron")

        sender = Sender(front).start()
        try:
            images = [data_uri(fmt, colour, (12 + i, 9 + i % 5))
                      for i, (fmt, colour) in enumerate((f, c) for f in ("PNG", "JPEG", "WEBP") for c in COLOURS)]
            submitted = submit(front, images[:IMAGES])
            engine = sa.create_engine(database_url)
            # Every image sent on to Runware before the cut: a submission cut off mid-request waits out its lease.
            wait_for(lambda: all(r.status != "queued" for r in rows(engine, submitted).values()), timeout=60,
                     what="every image sent to Runware")
            wait_for(lambda: len(sender.acked) >= ACKED_BEFORE_CUT and "drain stored" in drains["work1"].output(),
                     timeout=60, what="webhooks acknowledged, and drained on work1 too")
            net.cut("work1")
            cut_at = len(sender.acked)
            time.sleep(2)  # the host is unreachable, its processes still running
            hosts.kill("work1")
            wait_for(lambda: len(sender.acked) >= cut_at + ACKED_AFTER_CUT, timeout=60,
                     what="webhooks acknowledged after the cut")
        finally:
            sender.stop()

        wait_for(lambda: queue.xlen(DELIVERY_STREAM) == 0, timeout=90, interval=0.5,
                 what="work2 to drain the stream, work1's pending entries included")
        wait_for(lambda: all(r.status in ("success", "error") for r in rows(engine, submitted).values()),
                 timeout=90, interval=0.5, what="every submitted task in a final state")
        print(f"\nmulti-host: {len(sender.acked)} webhooks acknowledged ({cut_at} before the cut), refused "
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
