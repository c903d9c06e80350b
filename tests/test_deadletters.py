"""Dead letters: N attempts before a letter, replay by id, time range or all, exactly once; API and CLI."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
import sqlalchemy as sa

from receiver import create_app
from store.schema import dead_letters
from store.schema import deliveries
from store.schema import tasks
from tests.helpers import failure
from tests.helpers import new_uuid
from tests.helpers import post
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import run_worker
from tests.support import with_intake
from workers import maintenance
from workers.persist import REJECTED_RETRY_DELAYS
from workers.queues import PERSIST_QUEUE

ADMIN = {"Authorization": "Bearer admin-token"}
READ = {"Authorization": "Bearer read-token"}
SUBMIT = {"Authorization": "Bearer submit-token"}

REFUSE = {
    "sqlite": ["""CREATE TRIGGER refuse BEFORE INSERT ON tasks WHEN NEW.text = 'poison'
                  BEGIN SELECT RAISE(ABORT, 'poison caption refused'); END"""],
    "postgresql": [
        """CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN
             IF NEW.text = 'poison' THEN RAISE EXCEPTION 'poison caption refused' USING ERRCODE = '22000'; END IF;
             RETURN NEW; END $$ LANGUAGE plpgsql""",
        "CREATE TRIGGER refuse BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION refuse()",
    ],
}


class Refusal:
    """The database refusing the caption 'poison', switchable on and off during a test."""

    def __init__(self, engine):
        self.engine = engine

    def on(self):
        with self.engine.begin() as conn:
            for statement in REFUSE[conn.dialect.name]:
                conn.execute(sa.text(statement))

    def off(self):
        with self.engine.begin() as conn:
            postgres = conn.dialect.name == "postgresql"
            conn.execute(sa.text("DROP TRIGGER IF EXISTS refuse" + (" ON tasks" if postgres else "")))
            if postgres:
                conn.execute(sa.text("DROP FUNCTION IF EXISTS refuse()"))


@pytest.fixture
def refusal(engine):
    refusal = Refusal(engine)
    refusal.on()
    yield refusal
    refusal.off()


@pytest.fixture
def admin_app(config):
    config = dataclasses.replace(config, admin_tokens=("admin-token",))
    intake = create_app(config, kind="intake")
    app = with_intake(create_app(config), intake)
    yield app
    for each in (app, intake):
        each.extensions["redis"].close()


@pytest.fixture
def admin(admin_app):
    return admin_app.test_client()


def letters(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(dead_letters).order_by(dead_letters.c.id)).mappings()]


def task(engine, task_uuid) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(tasks).where(tasks.c.task_uuid == task_uuid)).mappings().first()
    return dict(row) if row else None


def add_letter(engine, task_uuid: str, created_at: datetime, text: str = "a caption") -> int:
    """A dead letter as the drain writes it (its delivery log row included)."""
    delivery_id = f"{int(created_at.timestamp() * 1000)}-0"
    with engine.begin() as conn:
        conn.execute(deliveries.insert().values(
            id=delivery_id, received_at=created_at - timedelta(seconds=5), remote_addr="10.0.0.1", size=99,
            outcome="rejected", items=[], detail="dead-lettered: refused", stored_at=created_at))
        return conn.execute(dead_letters.insert().values(
            delivery_id=delivery_id, task_uuid=task_uuid, reason="refused", attempts=3, created_at=created_at,
            item={"task_uuid": task_uuid, "status": "success", "text": text, "cost": "0.0019",
                  "task_type": "imageCaption"},
        )).inserted_primary_key[0]


def test_a_refused_item_is_tried_n_times_then_dead_lettered(client, config, engine, refusal):
    good, bad = new_uuid(), new_uuid()
    post(client, wrapped(success(good), success(bad, text="poison")))
    post(client, wrapped(success(new_uuid())))

    run_worker(config.redis_url, PERSIST_QUEUE)

    # A delivery is stored whole or not at all: its good item is dead-lettered with the bad one ...
    assert [(x["task_uuid"], x["item"]["text"]) for x in letters(engine)] == [(good, "a red square on white"),
                                                                              (bad, "poison")]
    for letter in letters(engine):
        assert letter["attempts"] == len(REJECTED_RETRY_DELAYS) + 1 == 3
        assert "poison caption refused" in letter["reason"]
        assert letter["replayed_at"] is None
    assert task(engine, bad) is None and task(engine, good) is None
    # ... while the other delivery of the batch is stored.
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(tasks)) == 1


def test_replay_by_id_stores_the_item_once(admin, client, config, engine, refusal):
    bad = new_uuid()
    post(client, wrapped(success(bad, text="poison", cost=0.25)))
    run_worker(config.redis_url, PERSIST_QUEUE)
    [letter] = letters(engine)

    refused = admin.post("/api/dead-letters/replay", json={"ids": [letter["id"]]}, headers=ADMIN)
    assert refused.status_code == 200
    assert refused.json["replayed"] == 0 and refused.json["failed"][0]["id"] == letter["id"]
    assert "poison caption refused" in refused.json["failed"][0]["reason"]
    assert letters(engine)[0]["attempts"] == 4 and letters(engine)[0]["replayed_at"] is None

    refusal.off()
    done = admin.post("/api/dead-letters/replay", json={"ids": [letter["id"]]}, headers=ADMIN)
    again = admin.post("/api/dead-letters/replay", json={"ids": [letter["id"]]}, headers=ADMIN)

    assert done.json == {"replayed": 1, "replayed_ids": [letter["id"]], "failed": [], "remaining": 0}
    assert again.json["replayed"] == 0
    stored = task(engine, bad)
    assert (stored["status"], stored["text"], float(stored["cost"])) == ("success", "poison", 0.25)
    assert stored["delivery_count"] == 1
    with engine.connect() as conn:
        received = conn.scalar(sa.select(deliveries.c.received_at).where(deliveries.c.id == letter["delivery_id"]))
    assert stored["result_at"] == received, "the result keeps the time its webhook was received"
    assert letters(engine)[0]["replayed_at"] is not None


def test_replay_by_time_range_then_all(admin, engine):
    base = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    uuids = [new_uuid() for _ in range(4)]
    ids = [add_letter(engine, u, base + timedelta(hours=i)) for i, u in enumerate(uuids)]

    ranged = admin.post("/api/dead-letters/replay", headers=ADMIN,
                        json={"since": "2026-03-01T13:00:00Z", "until": "2026-03-01T15:00:00+00:00"})
    assert ranged.json["replayed_ids"] == ids[1:3]
    assert [task(engine, u) is not None for u in uuids] == [False, True, True, False]

    rest = admin.post("/api/dead-letters/replay", json={"all": True}, headers=ADMIN)
    assert rest.json["replayed_ids"] == [ids[0], ids[3]]
    assert all(task(engine, u)["delivery_count"] == 1 for u in uuids)


def test_replay_in_chunks_says_what_remains(admin, engine):
    base = datetime(2026, 3, 1, tzinfo=UTC)
    for i in range(5):
        add_letter(engine, new_uuid(), base + timedelta(minutes=i))
    first = admin.post("/api/dead-letters/replay", json={"all": True, "limit": 2}, headers=ADMIN)
    assert (first.json["replayed"], first.json["remaining"]) == (2, 3)


def test_concurrent_replays_store_each_letter_once(engine, database_url):
    base = datetime(2026, 3, 1, tzinfo=UTC)
    uuids = [new_uuid() for _ in range(40)]
    for i, u in enumerate(uuids):
        add_letter(engine, u, base + timedelta(seconds=i))
    reports = []
    start = threading.Barrier(4)

    def replay():
        start.wait()
        reports.append(maintenance.replay_dead_letters(engine))

    threads = [threading.Thread(target=replay) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sum(len(r.replayed) for r in reports) == 40
    assert sorted(i for r in reports for i in r.replayed) == sorted(set(i for r in reports for i in r.replayed))
    assert all(task(engine, u)["delivery_count"] == 1 for u in uuids)


def test_list_shows_pending_then_replayed(admin, client, engine):
    base = datetime(2026, 3, 1, tzinfo=UTC)
    first = add_letter(engine, new_uuid(), base)
    second = add_letter(engine, new_uuid(), base + timedelta(hours=1))
    admin.post("/api/dead-letters/replay", json={"ids": [first]}, headers=ADMIN)

    pending = admin.get("/api/dead-letters", headers=READ)
    replayed = admin.get("/api/dead-letters?state=replayed", headers=ADMIN)
    everything = admin.get("/api/dead-letters?state=all&limit=1", headers=READ)

    assert [x["id"] for x in pending.json["dead_letters"]] == [second]
    assert pending.json["counts"] == {"pending": 1, "replayed": 1}
    assert [x["id"] for x in replayed.json["dead_letters"]] == [first]
    assert replayed.json["dead_letters"][0]["replayed_at"]
    assert everything.json["next_after"] == first
    later = admin.get(f"/api/dead-letters?state=all&after={first}", headers=READ)
    assert [x["id"] for x in later.json["dead_letters"]] == [second]


@pytest.mark.parametrize("method, path, headers, status", [
    ("get", "/api/dead-letters", {}, 401),
    ("get", "/api/dead-letters", SUBMIT, 401),
    ("get", "/api/dead-letters", READ, 200),
    ("get", "/api/dead-letters", ADMIN, 200),
    ("post", "/api/dead-letters/replay", {}, 401),
    ("post", "/api/dead-letters/replay", READ, 401),
    ("post", "/api/dead-letters/replay", SUBMIT, 401),
    ("post", "/api/dead-letters/replay", ADMIN, 200),
])
def test_tokens(admin, method, path, headers, status):
    response = getattr(admin, method)(path, headers=headers, json={"all": True} if method == "post" else None)
    assert response.status_code == status


def test_replay_over_http_is_off_without_admin_tokens(client):
    assert client.post("/api/dead-letters/replay", json={"all": True}, headers=ADMIN).status_code == 401


@pytest.mark.parametrize("body, fragment", [
    ({}, "exactly one"),
    ({"ids": [1], "all": True}, "exactly one"),
    ({"all": True, "since": "2026-01-01"}, "exactly one"),
    ({"ids": []}, "ids"),
    ({"ids": ["1"]}, "ids"),
    ({"since": "yesterday"}, "since"),
    ({"all": True, "limit": 0}, "limit"),
    ([1, 2], "JSON object"),
])
def test_bad_replay_requests_say_why(admin, body, fragment):
    response = admin.post("/api/dead-letters/replay", json=body, headers=ADMIN)
    assert response.status_code == 400
    assert fragment in response.json["error"]["message"]


def test_cli_lists_and_replays(admin_app, engine):
    base = datetime(2026, 3, 1, tzinfo=UTC)
    uuids = [new_uuid() for _ in range(3)]
    ids = [add_letter(engine, u, base + timedelta(hours=i)) for i, u in enumerate(uuids)]
    runner = admin_app.test_cli_runner()

    listed = runner.invoke(args=["deadletters", "list"])
    assert listed.exit_code == 0, listed.output
    assert sum(1 for line in listed.stdout.splitlines() if line.startswith("{")) == 3

    by_id = runner.invoke(args=["deadletters", "replay", "--id", str(ids[0])])
    by_time = runner.invoke(args=["deadletters", "replay", "--since", "2026-03-01T01:00:00Z",
                                  "--until", "2026-03-01T02:00:00Z"])
    rest = runner.invoke(args=["deadletters", "replay", "--all"])
    assert [r.exit_code for r in (by_id, by_time, rest)] == [0, 0, 0], rest.output
    assert "replayed 1" in by_id.stdout and "replayed 1" in by_time.stdout and "replayed 1" in rest.stdout
    assert all(task(engine, u)["delivery_count"] == 1 for u in uuids)

    usage = runner.invoke(args=["deadletters", "replay", "--all", "--id", "1"])
    assert usage.exit_code == 2 and "exactly one" in usage.output


def test_cli_replay_exits_1_when_a_letter_is_refused_again(admin_app, engine, refusal):
    add_letter(engine, new_uuid(), datetime(2026, 3, 1, tzinfo=UTC), text="poison")
    result = admin_app.test_cli_runner().invoke(args=["deadletters", "replay", "--all"])
    assert result.exit_code == 1
    assert "refused again" in result.output


def test_an_error_item_replays_as_an_error(admin, engine):
    letter_task = new_uuid()
    created = datetime(2026, 3, 1, tzinfo=UTC)
    with engine.begin() as conn:
        item = {k: v for k, v in failure(letter_task).items()}
        letter = conn.execute(dead_letters.insert().values(
            delivery_id=None, task_uuid=letter_task, reason="refused", attempts=3, created_at=created,
            item={"task_uuid": letter_task, "status": "error", "error_code": item["code"],
                  "error_message": item["message"]})).inserted_primary_key[0]
    assert admin.post("/api/dead-letters/replay", json={"ids": [letter]}, headers=ADMIN).json["replayed"] == 1
    stored = task(engine, letter_task)
    assert (stored["status"], stored["error_code"], stored["result_at"]) == ("error", "timeoutProvider", created)
