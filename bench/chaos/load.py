"""The chaos run's load and kills: a submitter and a webhook sender that retry until a 2xx, and the killer."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter

import requests

from bench.chaos.ledger import Ledger
from bench.chaos.stack import Stack
from bench.procfs import children

WEBHOOK = "/webhooks/runware"
KILL_WEIGHTS = {"persist-horse": 3, "persist-worker": 2, "submit-worker": 2, "gunicorn-worker": 3, "cron": 1,
                "redis": 1}
"""How often each kind of kill is drawn, relative to the others."""



def sample_images(n: int, seed: int) -> list[str]:
    """Small distinct PNGs, as data URIs."""
    from PIL import Image
    from PIL import ImageDraw

    rng = random.Random(seed)
    images = []
    for i in range(n):
        image = Image.new("RGB", (48 + i % 7 * 8, 32 + i % 5 * 8), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        draw.rectangle((4, 4, 4 + i % 20, 20), fill=tuple(rng.randrange(256) for _ in range(3)))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        images.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return images


def paced(rate: float, stop: threading.Event, threads: int):
    """Yield at about `rate` per second in total, shared by `threads` threads, until `stop`."""
    interval = threads / rate
    next_at = time.monotonic()
    while not stop.is_set():
        yield
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))


def submitter(stack: Stack, ledger: Ledger, stop: threading.Event, rate: float, threads: int, batch: int,
              images: list[str], rng: random.Random) -> None:
    """POST /api/captions in batches, each until a 2xx (a cut answer may leave tasks the client never hears of)."""
    url = f"{stack.api.url}/api/captions"
    headers = {"Authorization": f"Bearer {stack.tokens['SUBMIT_TOKENS']}"}
    with requests.Session() as session:
        for _ in paced(rate / batch, stop, threads):
            body = {"images": [rng.choice(images) for _ in range(batch)], "includeCost": True}
            while True:
                with ledger.lock:
                    ledger.submit_requests += 1
                    number = ledger.submit_requests
                try:
                    answer = session.post(url, json=body, headers=headers, timeout=30)
                    if answer.status_code == 202:
                        with ledger.lock:
                            for task in answer.json()["tasks"]:
                                ledger.submitted[task["taskUUID"]] = number
                        break
                    ledger.refuse(f"captions {answer.status_code}")
                except requests.RequestException as exc:
                    ledger.refuse(f"captions {type(exc).__name__}")
                time.sleep(0.5)


def sender(stack: Stack, ledger: Ledger, stop: threading.Event, rate: float, threads: int,
           rng: random.Random) -> None:
    """Webhook results for tasks submitted elsewhere (source external), each posted until a 2xx."""
    url = f"{stack.intake.url}{WEBHOOK}"
    params = {"token": stack.tokens["WEBHOOK_TOKENS"]}
    with requests.Session() as session:
        for _ in paced(rate, stop, threads):
            task = str(uuid.uuid4())
            if rng.random() < 0.1:
                item = {"taskType": "imageCaption", "taskUUID": task, "code": "timeoutProvider",
                        "message": "the provider timed out"}
                body = {"errors": [item]}
            else:
                item = {"taskType": "imageCaption", "taskUUID": task, "text": f"external caption {task[:8]}",
                        "cost": round(rng.uniform(0.001, 0.01), 6)}
                body = {"data": [item]}
            with ledger.lock:
                ledger.expected[task] = item
            while True:
                with ledger.lock:
                    ledger.attempts[task] += 1
                try:
                    answer = session.post(url, params=params, data=json.dumps(body),
                                          headers={"Content-Type": "application/json"}, timeout=10)
                    if answer.ok:
                        with ledger.lock:
                            ledger.delivered[answer.json()["delivery"]] = task
                        break
                    ledger.refuse(f"webhook {answer.status_code}")
                except requests.RequestException as exc:
                    ledger.refuse(f"webhook {type(exc).__name__}")
                time.sleep(0.3)


# -- the killer ----------------------------------------------------------------------------------


def killer(stack: Stack, stop: threading.Event, every: float, rng: random.Random, kills: Counter,
           events: list) -> None:
    kinds, weights = zip(*KILL_WEIGHTS.items())
    while not stop.wait(rng.expovariate(1 / every)):
        kind = rng.choices(kinds, weights)[0]
        what = kill_one(stack, kind, rng)
        if what:
            kills[what] += 1
            events.append({"at": round(stack.progress.elapsed(), 2), "kill": what})


def kill_one(stack: Stack, kind: str, rng: random.Random) -> str | None:
    """Carry out one kill; returns what was killed (a busy-less horse becomes a worker kill)."""
    if kind == "redis":
        stack.restart_redis(rng.uniform(0.5, 5.0))
        return "redis"
    if kind == "gunicorn-worker":
        pids = stack.web_worker_pids()
        if not pids:
            return None
        try:
            os.kill(rng.choice(pids), signal.SIGKILL)
        except ProcessLookupError:
            return None
        return kind
    if kind == "persist-horse":
        # A horse runs only while a job does: watch for one for up to two seconds, as a crash mid-job would.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            horses = [pid for s in stack.named("persist") if s.running() for pid in children(s.pid)]
            if horses:
                try:
                    os.kill(rng.choice(horses), signal.SIGKILL)
                    return kind
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        kind = "persist-worker"
    prefix = {"persist-worker": "persist", "submit-worker": "submit", "cron": "cron"}[kind]
    candidates = [s for s in stack.named(prefix) if s.running()]
    if not candidates:
        return None
    rng.choice(candidates).kill()
    return kind
