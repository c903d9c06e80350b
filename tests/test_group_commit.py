"""Group commit (receiver/group_commit.py): requests served at once share one Redis round trip.

Redis's writes are held with CLIENT PAUSE WRITE so that requests pile up behind
the round trip under way; Redis's own command counts then show how many round
trips carried them (each ends with one SET, the drain flag). Every request must
still get its own entry's id, and nothing before Redis has confirmed it.
"""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from receiver.group_commit import GroupCommit
from store.schema import utcnow
from tests.conftest import TOKENS
from tests.helpers import new_uuid
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import Gunicorn
from tests.support import wait_for
from workers.queues import DELIVERY_STREAM
from workers.queues import DRAIN_FLAG
from workers.queues import delivery_fields

REQUESTS = 8


@pytest.fixture
def conn(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.set(DRAIN_FLAG, 1, ex=60)  # a drain is wanted already: no round trip enqueues one
    client.config_resetstat()
    yield client
    client.client_unpause()
    client.close()


def calls(conn: redis.Redis, command: str) -> int:
    return conn.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def held_writes(conn: redis.Redis) -> int:
    return conn.info("clients")["blocked_clients"]


def test_requests_waiting_together_share_one_round_trip(conn, redis_url):
    commit = GroupCommit(redis.Redis.from_url(redis_url))
    bodies = [wrapped(success(new_uuid(), text=f"caption {i}")) for i in range(REQUESTS)]
    conn.client_pause(10_000, all=False)
    with ThreadPoolExecutor(REQUESTS) as pool:
        first = pool.submit(commit.add, delivery_fields(bodies[0], "10.0.0.0", utcnow()))
        wait_for(lambda: held_writes(conn) == 1, what="the first request's round trip to wait in Redis")
        rest = [pool.submit(commit.add, delivery_fields(body, f"10.0.0.{i}", utcnow()))
                for i, body in enumerate(bodies[1:], 1)]
        wait_for(lambda: len(commit.waiting) == REQUESTS - 1, what="the other requests to wait for it")
        assert not any(f.done() for f in [first, *rest]), "a request was answered before Redis took its entry"
        conn.client_unpause()
        ids = [f.result(timeout=10) for f in [first, *rest]]

    assert (calls(conn, "xadd"), calls(conn, "set")) == (REQUESTS, 2), "one round trip alone, then one for the rest"
    for i, entry_id in enumerate(ids):
        [(_, fields)] = conn.xrange(DELIVERY_STREAM, entry_id, entry_id)
        assert (fields[b"body"], fields[b"ip"]) == (bodies[i], f"10.0.0.{i}".encode()), "each gets its own entry"

    lone = commit.add(delivery_fields(bodies[0], None, utcnow()))  # nothing under way: sent at once, alone
    assert conn.xlen(DELIVERY_STREAM) == REQUESTS + 1 and lone not in ids
    assert (calls(conn, "xadd"), calls(conn, "set")) == (REQUESTS + 1, 3)


def test_every_request_of_a_refused_round_trip_gets_the_refusal(conn, redis_url):
    commit = GroupCommit(redis.Redis.from_url(redis_url))
    conn.config_set("maxmemory", 1)  # over its bound, Redis refuses XADD and SET (noeviction)
    conn.config_set("maxmemory-policy", "noeviction")
    try:
        conn.client_pause(10_000, all=False)
        with ThreadPoolExecutor(REQUESTS) as pool:
            futures = [pool.submit(commit.add, delivery_fields(wrapped(success(new_uuid())), None, utcnow()))]
            wait_for(lambda: held_writes(conn) == 1, what="the first round trip to wait in Redis")
            futures += [pool.submit(commit.add, delivery_fields(wrapped(success(new_uuid())), None, utcnow()))
                        for _ in range(REQUESTS - 1)]
            wait_for(lambda: len(commit.waiting) == REQUESTS - 1, what="the other requests to wait for it")
            conn.client_unpause()
            errors = [f.exception(timeout=10) for f in futures]
    finally:
        conn.config_set("maxmemory", 0)
    assert all(isinstance(e, redis.OutOfMemoryError) for e in errors), errors
    assert conn.xlen(DELIVERY_STREAM) == 0
    assert not commit.sending and not commit.waiting, "the next request leads a round trip of its own"
    assert commit.add(delivery_fields(b"{}", None, utcnow()))


def test_redis_not_answering_fails_each_request_and_the_next_one_tries_again(redis_server, redis_url):
    commit = GroupCommit(redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1))
    redis_server.stop()
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(commit.add, delivery_fields(b"{}", None, utcnow())) for _ in range(4)]
            errors = [f.exception(timeout=30) for f in futures]
    finally:
        redis_server.start()
    assert all(isinstance(e, redis.ConnectionError) for e in errors), errors
    assert commit.add(delivery_fields(b"{}", None, utcnow())), "the group commit works again once Redis answers"


@pytest.fixture
def intake(redis_url, sqlite_url):
    """The intake's gunicorn as deployed (threaded workers), two workers."""
    server = Gunicorn({"APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": sqlite_url, **TOKENS},
                      workers=2, kind="intake")
    server.start()
    yield server
    server.stop()


def test_webhooks_served_at_once_by_the_intake_share_round_trips(conn, intake):
    posts = 12
    bodies = [wrapped(success(new_uuid(), text=f"webhook {i}")) for i in range(posts)]
    answers: dict[int, requests.Response] = {}

    def send(i: int) -> None:
        answers[i] = requests.post(f"{intake.url}/webhooks/runware", params={"token": "hook-new"}, data=bodies[i],
                                   headers={"Content-Type": "application/json"}, timeout=30)

    conn.client_pause(15_000, all=False)
    senders = [threading.Thread(target=send, args=(i,)) for i in range(posts)]
    for sender in senders:
        sender.start()
    wait_for(lambda: held_writes(conn) == 2, what="a round trip of each worker to wait in Redis")
    threading.Event().wait(2.0)  # the other requests reach their worker meanwhile, and wait for its round trip
    assert not answers, "a webhook was answered before Redis took its entry"
    conn.client_unpause()
    for sender in senders:
        sender.join(timeout=30)

    assert sorted(answers) == list(range(posts)) and all(a.status_code == 202 for a in answers.values())
    assert calls(conn, "xadd") == posts
    # Each worker: the round trip held by the pause, then one for all that waited (4 in all), and one more
    # for any request that reached its worker late on a loaded machine; one round trip each would be 12.
    assert calls(conn, "set") <= posts // 2, "the webhooks that waited together did not share round trips"
    for i, answer in answers.items():
        entry_id = answer.json()["delivery"]
        [(_, fields)] = conn.xrange(DELIVERY_STREAM, entry_id, entry_id)
        assert fields[b"body"] == bodies[i], "each webhook's answer names its own entry"


def test_trickling_clients_hold_no_intake_worker(intake):
    """A client sending its webhook a byte at a time holds one thread, not the worker: the others are answered."""
    body = wrapped(success(new_uuid()))
    head = (b"POST /webhooks/runware?token=hook-new HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    trickling = [socket.create_connection(("127.0.0.1", intake.port), timeout=10) for _ in range(4)]
    try:
        for sock in trickling:
            sock.sendall(head + body[:1])
        threading.Event().wait(0.5)  # each worker is now reading a trickled body
        for _ in range(4):
            answer = requests.post(f"{intake.url}/webhooks/runware", params={"token": "hook-new"},
                                   data=wrapped(success(new_uuid())), headers={"Content-Type": "application/json"},
                                   timeout=5)
            assert answer.status_code == 202
    finally:
        for sock in trickling:
            sock.close()
