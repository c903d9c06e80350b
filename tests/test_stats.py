"""`GET /api/stats` and `GET /api/tasks`: exact numbers, paging, filters, bad parameters, auth."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from store.schema import tasks
from tests.reporting_data import UUID
from tests.reporting_data import at

READ = {"Authorization": "Bearer read-token"}


def get(client, path, **params):
    response = client.get(path, query_string=params, headers=READ)
    assert response.headers["Cache-Control"] == "no-store"
    return response


def stats(client, **params) -> dict:
    response = get(client, "/api/stats", **params)
    assert response.status_code == 200, response.json
    return response.json


# --- /api/stats -------------------------------------------------------------------------------


def test_stats_all_time(client, store):
    body = stats(client)
    assert body["window"] == {"since": None, "until": None}
    assert body["tasks"] == {
        "total": 9,
        "byStatus": {"queued": 1, "submitted": 2, "error": 1, "success": 5},   # H; F G; D; A B C E I
        "bySource": {"submitted": 5, "external": 4},                         # B C F G H; A D E I
        "conflicts": 1,                                                      # C
        "averageDeliveries": 1.666667,                                       # (1+2+4+1+1+1) / 6
    }
    spend = body["spend"]
    assert spend["exact"] == "1.5364678901"                                  # 0.0019 + 0.1 + 0.2 + 1.2345678901
    assert spend["usd"] == 1.536468
    assert spend["successes"] == 5
    assert spend["byDay"] == [
        # A and B (B's result at 23:59:59.999999 is still 1 March)
        {"day": "2026-03-01", "tasks": 2, "successes": 2, "errors": 0, "usd": 0.1019, "exact": "0.1019000000"},
        # C at midnight, D the error, E without cost, I at 01:30+02:00 = 2 March 23:30 UTC
        {"day": "2026-03-02", "tasks": 4, "successes": 3, "errors": 1, "usd": 1.434568, "exact": "1.4345678901"},
    ]
    assert body["deliveries"] == {"received": 4, "byOutcome": {"stored": 2, "partial": 1, "rejected": 1}}
    assert body["deadLetters"] == {"total": 3, "pending": 2}
    waiting = body["waiting"]
    assert waiting["count"] == 2
    assert waiting["oldest"]["taskUUID"] == UUID["F"]
    assert waiting["oldest"]["submittedAt"] == "2026-03-02T08:00:00+00:00"
    assert waiting["oldest"]["ageSeconds"] > 0


def test_stats_for_one_day(client, store):
    body = stats(client, since="2026-03-02", until="2026-03-03T00:00:00Z")
    assert body["window"] == {"since": "2026-03-02T00:00:00+00:00", "until": "2026-03-03T00:00:00+00:00"}
    assert body["tasks"] == {
        "total": 5,                                                          # created on 2 March: C D E F I
        "byStatus": {"queued": 0, "submitted": 1, "error": 1, "success": 3},
        "bySource": {"submitted": 2, "external": 3},
        "conflicts": 1,
        "averageDeliveries": 1.75,                                           # (4+1+1+1) / 4, F has none
    }
    assert body["spend"]["exact"] == "1.4345678901"
    assert body["spend"]["successes"] == 3                                   # C E I
    assert [d["day"] for d in body["spend"]["byDay"]] == ["2026-03-02"]
    assert body["deliveries"] == {"received": 1, "byOutcome": {"stored": 0, "partial": 0, "rejected": 1}}
    assert body["deadLetters"] == {"total": 1, "pending": 1}
    assert body["waiting"]["count"] == 2                                     # the backlog ignores the window


def test_stats_window_ends_are_since_inclusive_until_exclusive(client, store):
    body = stats(client, since="2026-03-01T23:59:59.999999Z", until="2026-03-02T00:00:00Z")
    assert body["spend"]["exact"] == "0.1000000000"                          # B only; C is at `until`
    assert body["spend"]["byDay"][0]["tasks"] == 1
    # An offset is honoured: 01:00+01:00 is midnight UTC.
    body = stats(client, since="2026-03-02T01:00:00+01:00", until="2026-03-02T00:00:01Z")
    assert body["spend"]["exact"] == "0.2000000000"                          # C only
    assert body["tasks"]["byStatus"]["success"] == 1


def test_stats_of_an_empty_store(client, engine):
    body = stats(client)
    assert body["tasks"]["total"] == 0
    assert body["tasks"]["averageDeliveries"] is None
    assert body["spend"] == {"usd": 0.0, "exact": "0.0000000000", "successes": 0, "byDay": []}
    assert body["waiting"] == {"count": 0, "oldest": None}
    assert body["deliveries"]["received"] == 0


def test_spend_is_exact_where_floats_are_not(client, engine):
    """A thousand successes at 0.1 USD cost exactly 100 USD (a float sum says 99.9999999999986)."""
    assert sum([0.1] * 1000) != 100
    rows = [
        {"task_uuid": str(uuid.UUID(int=n)), "status": "success", "source": "external", "cost": Decimal("0.1"),
         "result_at": at(1, 12) + timedelta(seconds=n), "created_at": at(1, 12), "updated_at": at(1, 12),
         "delivery_count": 1, "conflict": False}
        for n in range(1000)
    ]
    rows.append({**rows[0], "task_uuid": str(uuid.UUID(int=5000)), "cost": Decimal("0.0000000001")})
    with engine.begin() as conn:
        conn.execute(tasks.insert(), rows)
    body = stats(client)
    assert body["spend"]["exact"] == "100.0000000001"
    assert body["spend"]["usd"] == 100.0
    assert body["spend"]["byDay"][0]["exact"] == "100.0000000001"


# --- /api/tasks -------------------------------------------------------------------------------


def sort_key(row: dict):
    return row["updatedAt"], row["taskUUID"]


def all_pages(client, **params) -> tuple[list[dict], int]:
    """Every task the list gives, following cursors; and how many pages that took."""
    seen, cursor, pages = [], None, 0
    while True:
        response = get(client, "/api/tasks", **params, **({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.json
        body = response.json
        pages += 1
        assert len(body["tasks"]) <= body["limit"]
        seen += body["tasks"]
        cursor = body["nextCursor"]
        if cursor is None:
            return seen, pages


def test_task_list_is_newest_first_with_the_public_fields(client, store):
    body = get(client, "/api/tasks").json
    assert body["limit"] == 50 and body["nextCursor"] is None
    assert [t["taskUUID"] for t in body["tasks"]] == [UUID[n] for n in "HGIEDFCBA"]
    first = body["tasks"][0]
    assert set(first) == {"taskUUID", "status", "source", "taskType", "model", "text", "cost", "errorCode",
                          "errorMessage", "conflict", "deliveryCount", "firstDeliveryAt", "lastDeliveryAt",
                          "submittedAt", "createdAt", "updatedAt", "labels", "labelConflicts", "thumbnail"}
    task_i = body["tasks"][2]
    assert task_i["cost"] == 1.2345678901 and task_i["updatedAt"] == "2026-03-02T23:30:00+00:00"


@pytest.mark.parametrize("limit", [1, 2, 7, 500])
def test_paging_gives_every_row_once_in_order(client, engine, limit):
    """Many rows share an updated_at: the taskUUID breaks the tie, so no page boundary loses or repeats one."""
    rows = [
        {"task_uuid": str(uuid.uuid4()), "status": ("success", "error", "queued")[n % 3], "source": "external",
         "created_at": at(1), "updated_at": at(1, n % 4), "delivery_count": 0, "conflict": False}
        for n in range(40)
    ]
    with engine.begin() as conn:
        conn.execute(tasks.insert(), rows)
    seen, pages = all_pages(client, limit=limit)
    assert len(seen) == 40 and len({t["taskUUID"] for t in seen}) == 40
    assert seen == sorted(seen, key=sort_key, reverse=True)
    assert pages == -(-40 // limit)
    # With a filter too: only the successes, each once.
    seen, _ = all_pages(client, limit=limit, status="success")
    assert sorted(t["taskUUID"] for t in seen) == sorted(r["task_uuid"] for r in rows if r["status"] == "success")


def uuids(client, **params) -> list[str]:
    response = get(client, "/api/tasks", **params)
    assert response.status_code == 200, response.json
    return [t["taskUUID"] for t in response.json["tasks"]]


def test_task_list_filters(client, store):
    assert uuids(client, status="error,success") == [UUID[n] for n in "IEDCBA"]
    assert uuids(client, status="SUBMITTED", source="submitted") == [UUID[n] for n in "GF"]
    assert uuids(client, source="external", status="") == [UUID[n] for n in "IEDA"]
    # The window is on updated_at: 2 March, until exclusive.
    assert uuids(client, since="2026-03-02", until="2026-03-02T23:30:00Z") == [UUID[n] for n in "EDFC"]
    # Text: case-insensitive words, punctuation and LIKE wildcards separate them; or a taskUUID prefix.
    assert uuids(client, q="COTTON") == [UUID[n] for n in "IE"]
    assert uuids(client, q="100%") == [UUID["E"]]
    assert uuids(client, q='"QUOTES"') == [UUID["A"]]
    assert uuids(client, q=UUID["C"][:12].upper()) == [UUID["C"]]
    assert uuids(client, q="no such caption") == []


@pytest.mark.parametrize("params, parameter", [
    ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "1.5"}, "limit"),
    ({"limit": "9" * 5000}, "limit"),
    ({"status": "done"}, "status"),
    ({"status": "success,nope"}, "status"),
    ({"source": "mine"}, "source"),
    ({"since": "yesterday"}, "since"),
    ({"until": "2026-13-01"}, "until"),
    ({"since": "2026-03-02", "until": "2026-03-01"}, "until"),
    ({"since": "2026-03-02", "until": "2026-03-02"}, "until"),
    ({"cursor": "bm90IGEgY3Vyc29y"}, "cursor"),
    ({"cursor": "%%%"}, "cursor"),
    ({"q": "x" * 201}, "q"),
    ({"stauts": "error"}, "stauts"),
    ({"limit": ["1", "2"]}, "limit"),
])
def test_bad_task_list_parameters_are_400_naming_them(client, params, parameter):
    response = get(client, "/api/tasks", **params)
    assert response.status_code == 400
    error = response.json["error"]
    assert error["parameter"] == parameter
    assert error["message"].startswith(f"{parameter}: ")


@pytest.mark.parametrize("params, parameter", [
    ({"since": "2026-03-02T00:00:00 02:00"}, "since"),   # an unescaped '+' arrives as a space
    ({"until": "soon"}, "until"),
    ({"since": "2026-03-03", "until": "2026-03-02"}, "until"),
    ({"limit": "5"}, "limit"),
])
def test_bad_stats_parameters_are_400_naming_them(client, params, parameter):
    response = get(client, "/api/stats", **params)
    assert response.status_code == 400
    assert response.json["error"]["parameter"] == parameter
    if "02:00" in str(params):
        assert "%2B" in response.json["error"]["message"]


def test_a_cursor_continues_where_the_page_ended(client, store):
    first = get(client, "/api/tasks", limit=4).json
    assert [t["taskUUID"] for t in first["tasks"]] == [UUID[n] for n in "HGIE"]
    rest = get(client, "/api/tasks", limit=4, cursor=first["nextCursor"]).json
    assert [t["taskUUID"] for t in rest["tasks"]] == [UUID[n] for n in "DFCB"]
    last = get(client, "/api/tasks", limit=4, cursor=rest["nextCursor"]).json
    assert [t["taskUUID"] for t in last["tasks"]] == [UUID["A"]] and last["nextCursor"] is None


@pytest.mark.parametrize("path", ["/api/tasks", "/api/stats", "/api/tasks?limit=0", "/api/stats?since=x"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer hook-new"},
                                     {"Authorization": "Bearer submit-token"}])
def test_reading_lists_and_stats_needs_a_read_token(client, path, headers):
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Cache-Control"] == "no-store"
