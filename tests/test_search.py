"""`GET /api/tasks?q=`: caption search through the full-text index, on both stores.

Words, phrases, prefixes and taskUUID prefixes; combined with the other filters
and cursor pages; untrusted text searched literally or refused with a 400; the
index following inserts, updates and deletes, and built for an existing store
by the migration.
"""

from __future__ import annotations

import uuid
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from store import search
from store.migrate import downgrade
from store.migrate import upgrade
from store.results import Result
from store.results import apply_results
from store.schema import tasks

READ = {"Authorization": "Bearer read-token"}
T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)

CAPTIONS = {
    "red": "A red car parked by the lighthouse",
    "blue": "a blue car, and a red bicycle",
    "cats": "Two cats on a sofa near the window",
    "ops": "cat AND dog OR NOT bird text: NEAR quotes",
    "cafe": "Café crème at the Côte d'Azur, 日本語 sign",
    "sql": "'; DROP TABLE tasks; -- written on a wall",
    "house": "lighthouses on the coast at dusk",
    "none": None,
}
"""Captions by name; each task's updated_at follows this order (the last is newest)."""

UUIDS = {name: f"{n:08x}-aaaa-4000-8000-{n:012x}" for n, name in enumerate(CAPTIONS, start=1)}


def row(name: str, n: int, **extra) -> dict:
    return {
        "task_uuid": UUIDS[name], "status": "success", "source": "external", "text": CAPTIONS[name],
        "created_at": T0, "updated_at": T0 + timedelta(minutes=n), "delivery_count": 1, "conflict": False,
        **extra,
    }


@pytest.fixture
def captions(engine):
    """One task per caption; `blue` is an error and `cats` came from this service."""
    extra = {"blue": {"status": "error"}, "cats": {"source": "submitted"}}
    with engine.begin() as conn:
        conn.execute(tasks.insert(), [row(name, n, **extra.get(name, {})) for n, name in enumerate(CAPTIONS)])
    return engine


def found(client, **params) -> list[str]:
    """The names of the captions the list gives (one page)."""
    response = client.get("/api/tasks", query_string=params, headers=READ)
    assert response.status_code == 200, response.json
    names = {u: name for name, u in UUIDS.items()}
    return [names.get(t["taskUUID"], t["taskUUID"]) for t in response.json["tasks"]]


def every_page(client, **params) -> list[str]:
    """The taskUUIDs of every page of a listing, following `nextCursor` to the end."""
    seen, cursor = [], None
    while True:
        page = {**params, **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/tasks", query_string=page, headers=READ).json
        seen += [t["taskUUID"] for t in body["tasks"]]
        cursor = body["nextCursor"]
        if cursor is None:
            return seen


def refused(client, q: str) -> str:
    """The 400's message for search `q` (which must name the parameter)."""
    response = client.get("/api/tasks", query_string={"q": q}, headers=READ)
    assert response.status_code == 400, response.json
    assert response.json["error"]["parameter"] == "q"
    return response.json["error"]["message"]


def test_words_must_all_match_in_any_order_and_case(client, captions):
    assert found(client, q="car") == ["blue", "red"]
    assert found(client, q="RED car") == ["blue", "red"]
    assert found(client, q="car lighthouse") == ["red"]
    assert found(client, q="lighthouse") == ["red"]          # a word, not a substring of "lighthouses"
    assert found(client, q="car zebra") == []


def test_phrases_need_their_words_side_by_side_in_order(client, captions):
    assert found(client, q='"red car"') == ["red"]
    assert found(client, q='"car red"') == []
    assert found(client, q='"a red" bicycle') == ["blue"]


def test_prefixes_match_the_start_of_words(client, captions):
    assert found(client, q="lightho*") == ["house", "red"]
    assert found(client, q="CA*") == ["cafe", "ops", "cats", "blue", "red"]
    assert found(client, q="bic* red") == ["blue"]


def test_a_uuid_or_uuid_prefix_finds_the_task(client, captions):
    assert found(client, q=UUIDS["cats"]) == ["cats"]
    assert found(client, q=UUIDS["cats"][:8].upper()) == ["cats"]
    assert found(client, q=UUIDS["none"][:13]) == ["none"]   # a task without a caption too
    assert found(client, q=UUIDS["red"][:4]) == []            # shorter than the first group: a word


def test_search_combines_with_status_source_and_window(client, captions):
    assert found(client, q="car", status="error") == ["blue"]
    assert found(client, q="car", status="success") == ["red"]
    assert found(client, q="a", source="submitted") == ["cats"]
    since, until = (T0 + timedelta(minutes=1)).isoformat(), (T0 + timedelta(minutes=6)).isoformat()
    assert found(client, q="a", since=since, until=until) == ["sql", "cats", "blue"]
    assert found(client, q="car", since=since) == ["blue"]


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_cursor_pages_through_a_search_give_every_match_once_in_order(client, engine, limit):
    rows = [
        {"task_uuid": str(uuid.uuid4()), "status": "success", "source": "external",
         "text": f"harbour photo number {n}" if n % 3 else f"mountain photo {n}",
         "created_at": T0, "updated_at": T0 + timedelta(seconds=n % 4), "delivery_count": 1, "conflict": False}
        for n in range(30)
    ]
    with engine.begin() as conn:
        conn.execute(tasks.insert(), rows)
    expected = sorted(((r["updated_at"], r["task_uuid"]) for r in rows if "harbour" in r["text"]), reverse=True)
    assert every_page(client, q="harbour photo", limit=limit) == [task_uuid for _, task_uuid in expected]


@pytest.mark.parametrize("q, names", [
    ("cat OR bird", ["ops"]),             # OR is a word here, not an operator ("cats" has neither)
    ("cat NOT dog", ["ops"]),
    ("cat AND dog", ["ops"]),
    ("NEAR(cat dog)", []),                # the phrase "near cat" and the word "dog": not an FTS5 NEAR group
    ("text:cat", []),                     # the phrase "text cat", not a column filter
    ("text: NEAR", ["ops"]),
    ("^cat", ["ops"]),                    # '^' is punctuation, not FTS5's "first token" marker
    ("'; DROP TABLE tasks; --", ["sql"]),
    ("tasks; --", ["sql"]),
    ("crème", ["cafe"]),
    ("CAFÉ", ["cafe"]),
    ("日本語", ["cafe"]),
    ("%", None),
    ("car' OR '1'='1", []),
    ("DROP--TABLE", ["sql"]),
])
def test_untrusted_text_is_searched_literally_or_refused(client, captions, q, names):
    if names is None:
        assert "nothing to search for" in refused(client, q)
    else:
        assert found(client, q=q) == names
    assert found(client) == list(reversed(CAPTIONS))        # the store is intact


@pytest.mark.parametrize("q, problem", [
    ('"red car', "unbalanced quote"),
    ('red "car" "', "unbalanced quote"),
    ("*", "'*' may only end a prefix"),
    ("a*", "at least 2 letters or digits"),
    ("*car", "'*' may only end a prefix"),
    ("c*r", "'*' may only end a prefix"),
    ("car-*", "at least 2 letters or digits"),
    ("&& || --", "nothing to search for"),
    ('""', "nothing to search for"),
    (" ".join(f"w{n}" for n in range(search.MAX_TERMS + 1)), f"more than {search.MAX_TERMS}"),
])
def test_malformed_queries_are_400_naming_q_and_the_problem(client, captions, q, problem):
    assert problem in refused(client, q)


def test_the_index_follows_the_write_path_updates_and_deletes(client, engine):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    for result in (Result(first, "error", T0, error_code="timeoutProvider"),  # the merge: no caption yet,
                   Result(first, "success", T0 + timedelta(seconds=1), text="a harbour at dawn")):  # then one
        with engine.begin() as conn:
            apply_results(conn, [result])
    assert found(client, q="harbour") == [first]
    with engine.begin() as conn:
        conn.execute(tasks.update().where(tasks.c.task_uuid == first).values(text="a meadow at noon"))
    assert found(client, q="harbour") == []
    assert found(client, q="meadow noon") == [first]
    with engine.begin() as conn:  # on SQLite the next task takes the deleted one's rowid
        conn.execute(tasks.delete().where(tasks.c.task_uuid == first))
        conn.execute(tasks.insert(), [{**row("red", 0), "task_uuid": second, "text": "a quiet street"}])
    assert found(client, q="meadow") == []
    assert found(client, q="street") == [second]


def test_the_migration_indexes_the_captions_already_stored(client, engine, database_url):
    downgrade(database_url, "0004")
    try:
        with engine.begin() as conn:
            conn.execute(tasks.insert(), [row("red", 0), row("house", 1)])
    finally:
        upgrade(database_url)
    assert found(client, q="lighthouse*") == ["house", "red"]
    with engine.begin() as conn:  # and the triggers (SQLite) are in place again
        conn.execute(tasks.insert(), [row("cats", 2)])
    assert found(client, q="sofa") == ["cats"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=st.text(max_size=60) | st.text(alphabet='"*^:()-+ ANDORTNEa\'\\%_', max_size=30))
def test_arbitrary_text_as_q_never_fails_the_server(client, captions, q):
    response = client.get("/api/tasks", query_string={"q": q}, headers=READ)
    assert response.status_code in (200, 400), response.json
    if response.status_code == 400:
        assert response.json["error"]["parameter"] == "q"


@pytest.mark.parametrize("text_first, chunk, text_first_pg", [
    (search.TEXT_FIRST_MATCHES, search.WALK_CHUNK, search.TEXT_FIRST_MATCHES_PG),
    (1, 7, 0),
    (1, 1000, 10**9),
])
def test_every_plan_gives_the_same_pages(client, engine, monkeypatch, text_first, chunk, text_first_pg):
    """A rare query sorts its matches; a common one walks the list (SQLite: in chunks): all must page alike."""
    monkeypatch.setattr(search, "TEXT_FIRST_MATCHES", text_first)
    monkeypatch.setattr(search, "WALK_CHUNK", chunk)
    monkeypatch.setattr(search, "TEXT_FIRST_MATCHES_PG", text_first_pg)
    rows = [
        {"task_uuid": str(uuid.uuid4()), "status": ("success", "error")[n % 2], "source": "external",
         "text": "harbour photo" if n % 5 else "mountain photo", "created_at": T0,
         "updated_at": T0 + timedelta(seconds=(n * 7919) % 60), "delivery_count": 1, "conflict": False}
        for n in range(120)
    ]
    with engine.begin() as conn:  # inserted out of the list's order, so rowids and the order disagree
        conn.execute(tasks.insert(), rows)
    for params, wanted in (({"q": "harbour"}, lambda r: r["text"].startswith("harbour")),
                           ({"q": "photo", "status": "error"}, lambda r: r["status"] == "error")):
        expected = sorted(((r["updated_at"], r["task_uuid"]) for r in rows if wanted(r)), reverse=True)
        assert every_page(client, **params, limit=9) == [task_uuid for _, task_uuid in expected]
