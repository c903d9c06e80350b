"""Seeding a store for the readers benchmark, through the store's own write path, kept between runs.

N tasks over the 60 days before the seeding ends, written as the service writes
them: batches of parsed deliveries (`store.results.Delivery`) given to
`store.results.save_deliveries` (about 2 per task: duplicates, errors, errors
followed by a success, conflicting successes, deliveries hours late), and one
task in SUBMITTED_SHARE stored first by `store.submissions` (queued, then sent),
so that source and status vary. While a batch is written the store's clock
(`utcnow` in the `store` modules) reads the batch's receipt time, so created,
updated and stored times spread over the 60 days as if the deliveries had
arrived then. Optionally the store is seeded at an earlier migration revision
and then upgraded to the head, whose migrations build their tables from the
rows (quicker where the head's triggers make every write dearer).

Captions come from a vocabulary of a few thousand words drawn by a Zipf law;
COMMON_WORD is in most captions, RARE_WORD in one task of RARE_EVERY, and
ABSENT_WORD in none. Costs have 10 decimal places.

Tasks carry labels as Runware's tracking parameters would: a `projectId` among
PROJECTS values drawn by a Zipf law (COMMON_PROJECT the most frequent,
RARE_PROJECT the least) and a `userId` among USERS, uniformly; one task in
UNLABELED_EVERY has none. An external task's deliveries carry its labels as
the webhook URL's labels; a submitted task is queued with them (and its
deliveries carry them too, as the webhookURL it was sent with does).

A seeded store is kept under var/bench/readers/ (a SQLite file; for PostgreSQL a
database of its own at DATABASE_TEST_URL's server), keyed by N, the migration
revision and a digest of the migrations, and reused unless a reseed is asked for
(a store seeded at an earlier revision is kept too, and copied for each head). A
marker file written once seeding has finished records the seeding's figures and
its end time (the "now" the benchmark's windows are measured from).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from bench.common import ROOT
from bench.common import BenchError
from bench.stores import PostgresUnavailable
from store.db import create_engine
from store.results import Delivery
from store.results import Result
from store.results import apply_results
from store.results import save_deliveries
from store.submissions import NewTask
from store.submissions import mark_submitted
from store.submissions import queue_tasks

SEED_VERSION = 2
"""Bump when the generated data changes, so that stores seeded before are not reused."""

PG_SERVER_URL = os.environ.get("DATABASE_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""The PostgreSQL server the seeded databases live on (the tests' server)."""

SPAN = timedelta(days=60)
"""How far back the seeded deliveries go."""

CHUNK_TASKS = 5000
"""Tasks generated at once; their deliveries are written in receipt order."""

SUBMIT_GROUP = 10
"""Tasks submitted together (SUBMIT_BATCH_SIZE): queued and sent at the first one's time."""

BATCH_DELIVERIES = 1000
"""Deliveries per `save_deliveries` transaction, as the drain's PERSIST_BATCH_SIZE."""

SUBMITTED_SHARE = 0.15
"""Share of tasks this service submitted (source `submitted`); the others are external."""

VOCABULARY_SIZE = 3000
"""Distinct caption words."""

COMMON_WORD, RARE_WORD, ABSENT_WORD = "photo", "zeppelin", "quixotry"
"""A word in most captions, one in one task of RARE_EVERY, and one in no caption."""

RARE_EVERY = 100_000
"""One task in this many has RARE_WORD in its caption (the first task always does)."""

PROJECTS, USERS = 200, 20_000
"""Distinct values of the `projectId` label (Zipf) and of `userId` (uniform)."""

COMMON_PROJECT, RARE_PROJECT = "proj_0000", f"proj_{PROJECTS - 1:04d}"
"""The most and the least frequent projectId."""

UNLABELED_EVERY = 20
"""One task in this many carries no label."""

MODELS = ("runware:150@2", "runware:151@1", "runware:152@1", "florence-2-large")
"""Models named in the seeded results."""

SEED_CACHE_MIB = 2048
"""SQLite page cache while seeding: the indexes of a store of millions stay in memory."""

ANALYZE_GROWTH = 1.5
"""PostgreSQL: ANALYZE each time the store has grown this many times since the last (autovacuum's analyze, which a
server may run without, would do it sooner: otherwise the triggers' joins are planned for a store of a few rows)."""

PROGRESS_EVERY_S = 5.0
"""Seconds between two progress lines while seeding."""

_SYLLABLES = ("ba", "ce", "di", "fo", "gu", "ha", "ke", "li", "mo", "nu", "pa", "re", "si", "to", "vu", "wa",
              "ra", "ne", "ti", "lo", "mi", "sa", "de", "ko", "pe", "lu", "ga", "be", "no", "ri")
_CAPTION_WORDS = ("a", "an", "the", "of", "with", "on", "in", "and", "near", "under", "two", "three", "small",
                  "large", "red", "blue", "green", "white", "black", "bright", "dark", "old", "young", "wooden",
                  "cat", "dog", "man", "woman", "child", "car", "tree", "house", "street", "beach", "sky", "table",
                  "window", "field", "mountain", "river", "city", "garden", "kitchen", "road", "boat", "bird")


def vocabulary(seed: int = 7) -> list[str]:
    """The caption words, most frequent first (COMMON_WORD, RARE_WORD and ABSENT_WORD left out)."""
    rng = random.Random(seed)
    words = list(_CAPTION_WORDS)
    seen = set(words)
    while len(words) < VOCABULARY_SIZE:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in seen and not any(special in word for special in (COMMON_WORD, RARE_WORD, ABSENT_WORD)):
            seen.add(word)
            words.append(word)
    return words


@dataclass
class Seeded:
    """A seeded store: its URL, what it holds, and how long seeding took (None when reused as is)."""

    store: str
    url: str
    tasks: int
    deliveries: int
    ended_at: datetime
    seconds: float | None
    reused: bool
    seeded_at: str | None = None
    upgrade_seconds: float | None = None

    def as_json(self) -> dict:
        return {"tasks": self.tasks, "deliveries": self.deliveries, "ended_at": self.ended_at.isoformat(),
                "seed_seconds": self.seconds, "reused": self.reused, "seeded_at_revision": self.seeded_at,
                "upgrade_seconds": self.upgrade_seconds,
                "deliveries_per_s": round(self.deliveries / self.seconds) if self.seconds else None,
                "tasks_per_s": round(self.tasks / self.seconds) if self.seconds else None}

    @classmethod
    def from_json(cls, store: str, url: str, marker: dict) -> Seeded:
        return cls(store, url, marker["tasks"], marker["deliveries"], datetime.fromisoformat(marker["ended_at"]),
                   marker["seed_seconds"], True, marker.get("seeded_at_revision"), marker.get("upgrade_seconds"))


# --- the store's clock ---------------------------------------------------------------------------


@contextmanager
def store_clock() -> Iterator[list[datetime]]:
    """Make `utcnow` in every loaded `store` module read `clock[0]` (set by the caller) while inside."""
    import store.schema

    real = store.schema.utcnow
    clock = [real()]
    patched = [module for name, module in sorted(sys.modules.items())
               if (name == "store" or name.startswith("store.")) and getattr(module, "utcnow", None) is real]
    for module in patched:
        module.utcnow = lambda: clock[0]
    try:
        yield clock
    finally:
        for module in patched:
            module.utcnow = real


# --- generating ----------------------------------------------------------------------------------


class Generator:
    """Tasks and their deliveries, chunk by chunk, in receipt order within a chunk (deterministic per seed)."""

    def __init__(self, n: int, ended_at: datetime, seed: int = 1):
        self.n, self.ended_at, self.rng = n, ended_at, random.Random(seed)
        self.start = ended_at - SPAN
        self.words = vocabulary()
        self.cum_weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(self.words))))
        self.sequence = 0
        self.labels_rng = random.Random(seed + 1)  # its own: the other draws stay those of SEED_VERSION 1
        self.project_weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(PROJECTS)))
        self.projects = [f"proj_{rank:04d}" for rank in range(PROJECTS)]

    def labels(self, index: int) -> dict[str, str]:
        rng = self.labels_rng
        project = rng.choices(self.projects, cum_weights=self.project_weights)[0]
        user = f"user_{rng.randrange(USERS):05d}"
        return {} if index % UNLABELED_EVERY == UNLABELED_EVERY - 1 else {"projectId": project, "userId": user}

    def caption(self, index: int) -> str:
        rng = self.rng
        words = rng.choices(self.words, cum_weights=self.cum_weights, k=rng.randint(6, 14))
        if rng.random() < 0.9:
            words[rng.randrange(len(words))] = COMMON_WORD
        if index % RARE_EVERY == 0:
            words.append(RARE_WORD)
        return " ".join(words)

    def cost(self) -> Decimal:
        return Decimal(self.rng.randrange(10_000_000, 90_000_000)).scaleb(-10)  # 0.001-0.009 USD, 10 places

    def chunk(self, first: int, count: int) -> tuple[list, list]:
        """(tasks submitted by the service, deliveries in receipt order) of tasks first .. first+count-1.

        A submitted task comes as (NewTask, submission time, whether it was sent).
        """

        rng, step = self.rng, SPAN.total_seconds() / self.n
        submitted, items, labels = [], [], {}
        for index in range(first, first + count):
            task = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            t0 = self.start + timedelta(seconds=(index + rng.random()) * step)
            same = {"task_uuid": task, "model": rng.choice(MODELS),
                    "task_type": "caption" if rng.random() < 0.1 else "imageCaption"}
            labels[task] = self.labels(index)
            if rng.random() < SUBMITTED_SHARE:
                waiting = rng.random()
                submitted.append((NewTask(task, f"https://images.example.com/{task}.jpg", model=same["model"],
                                          labels=labels[task]), t0, waiting >= 0.002))  # a few stay queued, never sent
                if waiting < 0.012:
                    continue  # queued, or submitted and still without a result
            first_at = t0 + timedelta(seconds=rng.expovariate(1 / 5))
            outcome = rng.random()
            if outcome < 0.10:
                results = [(first_at, {"status": "error", "error_code": "invalidImage",
                                       "error_message": "image could not be read"})]
            elif outcome < 0.12:  # an error, then a success
                results = [(first_at, {"status": "error", "error_code": "timeout", "error_message": "timed out"}),
                           (first_at + timedelta(seconds=rng.expovariate(1 / 600)),
                            {"status": "success", "text": self.caption(index), "cost": self.cost()})]
            else:
                results = [(first_at, {"status": "success", "text": self.caption(index),
                                       "cost": self.cost() if rng.random() < 0.97 else None})]
                if rng.random() < 0.005:  # a second success that disagrees
                    results.append((first_at + timedelta(seconds=rng.expovariate(1 / 60)),
                                    {"status": "success", "text": self.caption(index), "cost": self.cost()}))
            for _ in range(rng.choices((0, 1, 2, 3), (35, 35, 25, 5))[0]):  # duplicates: the sender's retries
                late = rng.expovariate(1 / 6 / 3600) if rng.random() < 0.02 else rng.expovariate(1 / 60)
                results.append((first_at + timedelta(seconds=late), results[-1][1]))
            items.extend((at, Result(received_at=at, **same, **fields)) for at, fields in results)
        items.sort(key=lambda pair: pair[0])
        while items and items[-1][0] > self.ended_at:  # retried past the end of the seeding: never arrived
            items.pop()
        return submitted, [self.delivery(at, result, labels[result.task_uuid]) for at, result in items]

    def delivery(self, at: datetime, result, labels: dict[str, str]):
        self.sequence += 1
        skipped = ["data[1]: taskUUID is missing"] if self.sequence % 97 == 0 else []
        size = 120 + len(result.text or result.error_message or "")
        return Delivery(f"{int(at.timestamp() * 1000)}-{self.sequence}", at, f"10.0.{self.sequence % 7}.2", size,
                        [result], skipped, labels)


# --- writing -------------------------------------------------------------------------------------


def submit(engine: sa.Engine, clock: list[datetime], group: list) -> None:
    """Store a group of submitted tasks as the service does: queued, then (those sent) submitted at once."""
    at = group[0][1]
    sent = [new.task_uuid for new, _, was_sent in group if was_sent]
    with engine.begin() as conn:
        clock[0] = at - timedelta(seconds=2)
        queue_tasks(conn, [new for new, _, _ in group])
        clock[0] = at
        apply_results(conn, [Result(uuid, "submitted", at, task_type="imageCaption") for uuid in sent],
                      delivered=False)
        mark_submitted(conn, sent, poll_at=at + timedelta(minutes=1), now=at)


def write(url: str, n: int, progress) -> tuple[int, float, datetime]:
    """Seed `n` tasks into the migrated, empty store at `url`; returns (deliveries, seconds, end time)."""
    ended_at = datetime.now(UTC).replace(microsecond=0)
    generator = Generator(n, ended_at)
    engine = create_engine(url, sqlite_cache_mib=SEED_CACHE_MIB)
    written, started, shown, analyzed = 0, time.monotonic(), time.monotonic(), 0
    try:
        with store_clock() as clock:
            for first in range(0, n, CHUNK_TASKS):
                submitted, batch = generator.chunk(first, min(CHUNK_TASKS, n - first))
                for i in range(0, len(submitted), SUBMIT_GROUP):
                    submit(engine, clock, submitted[i:i + SUBMIT_GROUP])
                for i in range(0, len(batch), BATCH_DELIVERIES):
                    part = batch[i:i + BATCH_DELIVERIES]
                    clock[0] = part[-1].received_at + timedelta(milliseconds=50)
                    with engine.begin() as conn:
                        save_deliveries(conn, part)
                written += len(batch)
                if engine.dialect.name == "postgresql" and first + CHUNK_TASKS >= analyzed * ANALYZE_GROWTH:
                    analyzed = first + CHUNK_TASKS
                    with engine.connect() as conn:
                        conn.execute(sa.text("ANALYZE"))
                        conn.commit()
                if time.monotonic() - shown >= PROGRESS_EVERY_S or first + CHUNK_TASKS >= n:
                    shown, elapsed = time.monotonic(), time.monotonic() - started
                    done = min(first + CHUNK_TASKS, n)
                    eta = elapsed / done * (n - done)
                    progress(f"  seeded {done:,}/{n:,} tasks, {written:,} deliveries: {written / elapsed:,.0f} "
                             f"deliveries/s, {done / elapsed:,.0f} tasks/s, ETA {eta:,.0f} s")
    finally:
        engine.dispose()
    return written, time.monotonic() - started, ended_at


# --- keeping seeded stores -----------------------------------------------------------------------


def store_key(n: int, up_to: str | None = None) -> str:
    """N, the migration revision and a digest of the migrations up to it (all: the head) and of SEED_VERSION."""
    from alembic.script import ScriptDirectory

    from store.migrate import MIGRATIONS
    from store.migrate import alembic_config

    revision = up_to or ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    digest = hashlib.sha256(str(SEED_VERSION).encode())
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        if path.name[:len(revision)] <= revision:
            digest.update(path.read_bytes())
    return f"{n}_{revision}_{digest.hexdigest()[:8]}"


def _marker(cache: Path, name: str) -> dict | None:
    path = cache / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _pg_admin() -> sa.Engine:
    from config import database_url

    return sa.create_engine(database_url(PG_SERVER_URL), isolation_level="AUTOCOMMIT")


def _pg_run(admin: sa.Engine, statement: str, *names: str) -> None:
    """CREATE or DROP databases `names` (identifiers, quoted by psycopg)."""
    from psycopg import sql as psycopg_sql

    with admin.connect() as conn:
        conn.connection.driver_connection.execute(
            psycopg_sql.SQL(statement).format(*map(psycopg_sql.Identifier, names)))


class Location:
    """Where the seeded stores of one kind live: SQLite files under the cache folder, or PostgreSQL databases."""

    def __init__(self, store: str, cache: Path):
        self.store, self.cache = store, cache
        cache.mkdir(parents=True, exist_ok=True)

    def url(self, name: str) -> str:
        from config import database_url

        if self.store == "sqlite":
            return f"sqlite:///{self.cache / f'{name}.db'}"
        url = sa.engine.make_url(database_url(PG_SERVER_URL)).set(database=name)
        return url.render_as_string(hide_password=False)

    def complete(self, name: str) -> dict | None:
        """The marker of the finished store `name`, or None (and whatever is left of it removed)."""
        marker = _marker(self.cache, name)
        if self.store == "sqlite":
            if marker is None or not (self.cache / f"{name}.db").exists():
                for leftover in self.cache.glob(f"{name}.db*"):
                    leftover.unlink()
                return None
            return marker
        with self._admin() as admin, admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}).first() is not None
            if marker is None or not exists:
                if exists:
                    _pg_run(admin, "DROP DATABASE {} WITH (FORCE)", name)
                return None
        return marker

    def create(self, name: str, copy_of: str | None = None) -> str:
        """An empty store `name` (or a copy of the finished store `copy_of`); its URL."""
        if self.store == "sqlite":
            if copy_of:
                shutil.copyfile(self.cache / f"{copy_of}.db", self.cache / f"{name}.db")
        else:
            with self._admin() as admin:
                if copy_of:
                    _pg_run(admin, "CREATE DATABASE {} TEMPLATE {}", name, copy_of)
                else:
                    _pg_run(admin, "CREATE DATABASE {}", name)
        return self.url(name)

    @contextmanager
    def _admin(self) -> Iterator[sa.Engine]:
        admin = _pg_admin()
        try:
            with admin.connect():
                pass
        except sa.exc.OperationalError as exc:
            admin.dispose()
            where = PG_SERVER_URL.split("@")[-1]
            raise PostgresUnavailable(f"PostgreSQL unreachable at {where} ({type(exc.orig).__name__})") from None
        try:
            yield admin
        finally:
            admin.dispose()


def prepare(store: str, n: int, cache: Path, reseed: bool, progress, seed_at: str | None = None) -> Seeded:
    """A store of `n` tasks (`sqlite` or `postgres`) at the migration head: the kept one if complete, else made.

    With `seed_at`, the store is seeded at that migration revision, kept as such,
    and a copy of it upgraded to the head (whose migrations build what they add
    from the rows): quicker where the head's triggers make every write dearer,
    and a new migration then costs an upgrade, not a reseeding.
    """
    from store.migrate import upgrade

    where = Location(store, cache)
    name = f"readers_{store}_{store_key(n)}" + (f"_from{seed_at}" if seed_at else "")
    marker = None if reseed else where.complete(name)
    if marker is not None:
        progress(f"{store}: reusing the seeded store of {n:,} tasks ({name})")
        return Seeded.from_json(store, where.url(name), marker)
    if seed_at:
        snapshot = f"readers_{store}_{store_key(n, seed_at)}"
        seeded = None if reseed else where.complete(snapshot)
        if seeded is None:
            seeded = _seed(where, snapshot, n, seed_at, progress).as_json()
            (cache / f"{snapshot}.json").write_text(json.dumps(seeded, indent=2))
        else:
            progress(f"{store}: reusing the store of {n:,} tasks seeded at {seed_at} ({snapshot})")
        seeded = Seeded.from_json(store, where.create(name, copy_of=snapshot), seeded)
        seeded.reused, started = False, time.monotonic()
        upgrade(seeded.url)
        seeded.upgrade_seconds = round(time.monotonic() - started, 1)
        progress(f"{store}: upgraded a copy from {seed_at} to the head in {seeded.upgrade_seconds:,.1f} s")
    else:
        seeded = _seed(where, name, n, "head", progress)
    if store == "postgres":
        # What autovacuum's ANALYZE does soon after a bulk load; without statistics the planner guesses.
        # (SQLite is left without them, as the service runs it.)
        engine = sa.create_engine(seeded.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text("ANALYZE"))
        engine.dispose()
    (cache / f"{name}.json").write_text(json.dumps(seeded.as_json(), indent=2))
    return seeded


def _seed(where: Location, name: str, n: int, revision: str, progress) -> Seeded:
    from store.migrate import upgrade

    progress(f"{where.store}: seeding {n:,} tasks through store.results.save_deliveries at {revision} ({name})")
    url = where.create(name)
    upgrade(url, revision)
    try:
        deliveries, seconds, ended_at = write(url, n, progress)
    except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
        if revision == "head":
            raise
        raise BenchError(f"seeding at revision {revision} failed: today's write path needs what a later revision "
                         f"adds ({str(exc.orig).splitlines()[0]}); seed at a later one") from None
    return Seeded(where.store, url, n, deliveries, ended_at, round(seconds, 1), False,
                  None if revision == "head" else revision)


DEFAULT_CACHE = ROOT / "var" / "bench" / "readers"
"""Where seeded stores (and their markers) are kept between runs."""
