"""The readers benchmark's HTTP clients: timed GETs, a fixed-rate webhook sender, and polling dashboard readers.

The sender and the readers each run in a process of their own (forked), so that
neither's Python time skews the other's clocks. Every request has a socket
timeout, every loop a deadline and a count bound: the load stops by itself.
"""

from __future__ import annotations

import http.client
import itertools
import json
import multiprocessing
import os
import threading
import time
import uuid
from collections import Counter
from urllib.parse import urlsplit

from bench.common import CAPTIONS
from bench.common import WEBHOOK_PATH
from bench.common import BenchError
from bench.common import percentile
from bench.traffic import webhook_body

SENDER_THREADS = 64
"""Connections the webhook sender keeps busy at most; a slot waits for a free one (the lag is reported)."""

READ_TIMEOUT_S = 40.0
"""Socket timeout of a reader's request: longer than gunicorn's worker timeout (30 s), so a killed read shows."""

SENDER_GRACE_S = 2.0
"""A slot that could not be sent this many seconds after its time is given up (counted `not sent`)."""

WEBHOOK_TIMEOUT_S = 30.0
"""Socket timeout of a webhook POST (a sender gives up, as Runware's would)."""

READER_MAX_ROUNDS = 10_000
"""Rounds (stats + search + list page) a reader makes at most."""

READER_NICE = 10
"""CPU niceness of the readers' process: a client that shares the service's cores takes no more than its api."""


def request(base: str, path: str, *, token: str | None = None, body: bytes | None = None,
            timeout: float = READ_TIMEOUT_S) -> tuple[int | str, float, bytes]:
    """One HTTP request on a fresh connection: (status, or `timeout` / `no answer`; seconds; body)."""
    where = urlsplit(base)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    started = time.perf_counter()
    try:
        conn.request("POST" if body is not None else "GET", path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        return answer.status, time.perf_counter() - started, data
    except TimeoutError:
        return "timeout", time.perf_counter() - started, b""
    except (ConnectionError, http.client.HTTPException):  # a worker killed mid-request
        return "no answer", time.perf_counter() - started, b""
    finally:
        conn.close()


def next_cursor(data: bytes) -> str | None:
    """The `nextCursor` of a /api/tasks answer."""
    return json.loads(data).get("nextCursor") if data else None


# --- the webhook sender --------------------------------------------------------------------------


def _send(intake: str, token: str, rate: float, seconds: float, out) -> None:
    total = int(rate * seconds)
    slots = itertools.count()
    lock = threading.Lock()
    start = time.perf_counter() + 0.2
    latencies, lags, statuses = [], [], Counter()

    def worker() -> None:
        while True:
            with lock:
                k = next(slots)
            if k >= total:
                return
            slot = start + k / rate
            time.sleep(max(0.0, slot - time.perf_counter()))
            lag = time.perf_counter() - slot
            if lag > SENDER_GRACE_S:  # every connection was busy for that long: the slot is given up
                with lock:
                    statuses["not sent"] += 1
                continue
            body = webhook_body(str(uuid.uuid4()), CAPTIONS[k % len(CAPTIONS)])
            status, took, _ = request(intake, f"{WEBHOOK_PATH}?token={token}", body=body, timeout=WEBHOOK_TIMEOUT_S)
            with lock:
                latencies.append(took)
                lags.append(lag)
                statuses[str(status)] += 1

    threads = [threading.Thread(target=worker) for _ in range(SENDER_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    out.send({
        "sent": len(latencies), "seconds": round(elapsed, 2), "rate": round(len(latencies) / elapsed, 1),
        "target_rate": rate, "connections": SENDER_THREADS, "statuses": dict(statuses),
        "p50_ms": _ms(percentile(latencies, 50)), "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(max(latencies, default=None)),
        "sender_lag_p99_ms": _ms(percentile(lags, 99)),
    })


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# --- dashboard readers ---------------------------------------------------------------------------


def _read(readers: str, token: str, count: int, paths: dict[str, list[str]], seconds: float, out) -> None:
    # Dashboards run on other machines: here their Python time yields to the service's (the api's workers run at
    # API_NICE 10 too, so the readers' requests are still answered as fast as the api can).
    os.nice(READER_NICE)
    deadline = time.monotonic() + seconds
    statuses, lock = Counter(), threading.Lock()
    rounds = Counter()

    def reader(n: int) -> None:
        for i in range(READER_MAX_ROUNDS):
            for kind in ("stats", "search", "list"):
                if time.monotonic() >= deadline:
                    return
                choices = paths[kind]
                status, _, _ = request(readers, choices[(n + i) % len(choices)], token=token)
                with lock:
                    statuses[str(status)] += 1
            with lock:
                rounds["rounds"] += 1

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.send({"readers": count, "rounds": rounds["rounds"], "statuses": dict(statuses)})


# --- running both --------------------------------------------------------------------------------


def webhook_latency(intake: str, webhook_token: str, rate: float, seconds: float, *, readers_url: str,
                    read_token: str, readers: int, paths: dict[str, list[str]], warmup: float = 2.0) -> dict:
    """Webhook p50/p99 at `rate` for `seconds`, with `readers` dashboards polling the readers meanwhile."""
    fork = multiprocessing.get_context("fork")
    reading = None
    if readers:
        reader_end, reader_out = fork.Pipe(duplex=False)
        reading = fork.Process(target=_read, args=(readers_url, read_token, readers, paths,
                                                   warmup + seconds, reader_out), daemon=True)
        reading.start()
        time.sleep(warmup)  # the readers' queries are in flight before the first webhook
    sender_end, sender_out = fork.Pipe(duplex=False)
    sending = fork.Process(target=_send, args=(intake, webhook_token, rate, seconds, sender_out), daemon=True)
    sending.start()
    figures = _receive(sending, sender_end, seconds + SENDER_GRACE_S + WEBHOOK_TIMEOUT_S + 10, "webhook sender")
    if reading is not None:
        figures["reader_answers"] = _receive(reading, reader_end, READ_TIMEOUT_S + 10, "readers")
    return figures


def _receive(process, end, timeout: float, what: str) -> dict:
    """The figures a load process sends when done; it is killed if it overruns `timeout`."""
    if end.poll(timeout):
        figures = end.recv()
        process.join(5)
        return figures
    process.kill()
    process.join(5)
    raise BenchError(f"the {what} did not finish within {timeout:.0f} s")
