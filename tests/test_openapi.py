"""The OpenAPI document (`/api/openapi.json`) covers every route of both apps, and the apps keep to it.

Schemathesis generates requests from the document and sends them in-process to
both apps (webhooks to the intake, as the front does) with each kind of token,
on a store holding tasks, deliveries, dead letters and a task with labels and
history; every answer must be no 5xx, of a documented status, content type and
headers, and match its schema.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlsplit

import hypothesis
import pytest
import schemathesis
from apispec_webframeworks.flask import FlaskPlugin
from hypothesis import HealthCheck
from hypothesis import Phase
from schemathesis import GenerationMode
from schemathesis import checks
from werkzeug.serving import make_server

from config import Config
from receiver import create_app
from receiver import openapi
from tests.chromium import collect_errors
from tests.chromium import new_tab
from tests.chromium import open_tabs
from tests.conftest import TOKENS as SETTINGS
from tests.helpers import WEBHOOK
from tests.helpers import new_uuid
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import run_worker
from tests.test_deadletters import admin_app  # noqa: F401 (a fixture)
from workers.queues import PERSIST_QUEUE

TOKENS = {"read": "read-token", "submit": "submit-token", "admin": "admin-token", "webhook": "hook-new",
          "none": None}
"""A token of each kind the service knows (tests/conftest.py's settings, and an admin token), and none."""

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.response_schema_conformance, checks.negative_data_rejection,
          checks.ignored_auth]
"""Schemathesis's checks but positive_data_acceptance: a request the document allows may still break a rule
across parameters (until after since) or of a grammar (q), and gets a 400 naming it, which these check too."""

EXAMPLES = int(os.environ.get("OPENAPI_EXAMPLES", "6"))
"""Generated requests per operation, token kind and generation mode: enough to reach each answer, quick."""


@pytest.fixture
def both(admin_app, store):  # noqa: F811 (a fixture)
    """Both apps as the front joins them, with an admin token, on the reporting rows (tests/reporting_data.py)."""
    return admin_app


@pytest.fixture
def service(both, redis_url):
    """`both`, with a task stored from a webhook through a real drain: labels and a history to show."""
    client = both.test_client()
    task = new_uuid()
    queued = client.post(f"{WEBHOOK}?token=hook-new&projectId=p1", data=wrapped(success(task)),
                         content_type="application/json")
    assert queued.status_code == 202, queued.get_json()
    run_worker(redis_url, PERSIST_QUEUE)
    stored = client.get(f"/api/tasks/{task}", headers={"Authorization": "Bearer read-token"}).get_json()
    assert stored["labels"] == {"projectId": "p1"} and stored["history"], stored
    return both


@pytest.fixture
def sqlite_config(redis_url, sqlite_url) -> Config:
    """Settings on SQLite alone, for what does not depend on the store."""
    return Config.from_env({"APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": sqlite_url, **SETTINGS})


def test_the_document_describes_every_route_of_both_apps(sqlite_config):
    document = openapi.document()
    assert document["openapi"] == "3.1.0"
    for kind in ("intake", "api"):
        app = create_app(sqlite_config, kind=kind)
        for rule in app.url_map.iter_rules():
            path = FlaskPlugin.flaskpath2openapi(rule.rule)
            described = document["paths"].get(path, {})
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert method.lower() in described, f"{kind}: {method} {rule.rule} is not in the document"
        app.extensions["redis"].close()


def test_each_route_names_the_tokens_it_takes():
    paths = openapi.document()["paths"]
    schemes = openapi.document()["components"]["securitySchemes"]
    assert {"readToken", "submitToken", "adminToken", "webhookToken", "webhookBearer"} <= set(schemes)
    security = {path: {name for option in op.get("security", []) for name in option}
                for path, ops in paths.items() for method, op in ops.items() if method != "parameters"}
    assert security["/api/tasks"] == {"readToken"}
    assert security["/api/captions"] == {"submitToken"}
    assert security["/api/dead-letters/replay"] == {"adminToken"}
    assert security["/api/dead-letters"] == {"readToken", "adminToken"}
    assert security["/webhooks/runware"] == {"webhookToken", "webhookApiKey", "webhookBearer", "webhookHeader"}
    assert security["/healthz"] == set() and security["/api/openapi.json"] == set()
    for path, names in security.items():
        if names:
            assert all("401" in op["responses"] for m, op in paths[path].items() if m != "parameters"), path


def takes(operation, kind: str) -> bool:
    """Whether `operation` answers a caller with a `kind` token (or none) more than 401."""
    names = {name for option in operation.definition.raw.get("security", []) for name in option}
    return not names if kind == "none" else bool(names & set(openapi.AUTH[kind]))


def has_input(operation) -> bool:
    """Whether the operation takes a query or a body, which a negative case can break (a path string it cannot)."""
    raw = operation.definition.raw
    return "requestBody" in raw or any(p["in"] == "query" for p in raw.get("parameters", []))


def not_blank(case) -> bool:
    """An empty (or blank) query parameter counts as not given (receiver/params.py): not a violation."""
    return not any(isinstance(v, str) and not v.strip() for v in (case.query or {}).values())


STORES = [(store, kind) for kind in TOKENS for store in ("sqlite", "postgres")
          if store == "sqlite" or kind in ("read", "submit", "admin")]
"""The kinds of token whose routes use the store run on both; the webhook's and the public ones on SQLite."""


@pytest.mark.parametrize("database_url, kind", [
    pytest.param(store, kind, marks=[pytest.mark.postgres] if store == "postgres" else []) for store, kind in STORES
], indirect=["database_url"])
def test_every_answer_keeps_to_the_document(service, kind):
    """Each operation that takes the `kind` token (for "none": each that takes no token) gets EXAMPLES valid
    requests and, when it has a query or body to break, EXAMPLES invalid ones; the others one, to see their
    401 documented. Derandomized: the same cases each run (`make fuzz` is where breadth goes)."""
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", service)
    headers = {"Authorization": f"Bearer {TOKENS[kind]}"} if TOKENS[kind] else {}
    failures, calls = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        taken = takes(operation, kind)
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if taken and has_input(operation) else [])
        for mode in modes:
            strategy = operation.as_strategy(generation_mode=mode)

            @hypothesis.settings(max_examples=EXAMPLES if taken else 1, deadline=None, database=None,
                                 derandomize=True, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @hypothesis.given(case=strategy.filter(not_blank) if mode.is_negative else strategy)
            def check(case):
                nonlocal calls
                calls += 1
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                check()
            except Exception as exc:  # every operation's failure is reported, not the first only
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    assert calls >= len(list(schema.get_all_operations()))


# -- what the run found, each fixed ------------------------------------------------------------------

ADMIN = {"Authorization": "Bearer admin-token"}


@pytest.mark.parametrize("query, parameter", [("after=true", "after"), ("limit=1e3", "limit"),
                                              ("after=1&after=2", "after"), ("stat=all", "stat")])
def test_a_bad_dead_letter_parameter_is_named_not_ignored(both, query, parameter):
    answer = both.test_client().get(f"/api/dead-letters?{query}", headers=ADMIN)
    assert answer.status_code == 400 and answer.get_json()["error"]["parameter"] == parameter, answer.get_json()


def test_a_replay_of_ids_beyond_the_column_is_refused(both):
    answer = both.test_client().post("/api/dead-letters/replay", json={"ids": [2**63]}, headers=ADMIN)
    assert answer.status_code == 400 and answer.get_json()["error"]["message"].startswith("ids:")


def test_a_letter_whose_item_is_no_result_is_reported_not_a_500(both):
    """tests/reporting_data.py's letters hold `{"taskUUID": "nope"}`, not what the drain writes."""
    answer = both.test_client().post("/api/dead-letters/replay", json={"all": True}, headers=ADMIN)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    report = answer.get_json()
    assert report["replayed"] == 0 and len(report["failed"]) == report["remaining"] == 2, report
    assert all(f["reason"].startswith("the item is not a stored result") for f in report["failed"])


def test_a_multipart_part_without_a_name_is_refused_naming_it(both):
    body = (b'--xx\r\nContent-Disposition: form-data; name="f"; filename="a.png"\r\n\r\nnot an image\r\n'
            b'--xx\r\nContent-Disposition: form-data\r\n\r\nw\r\n--xx--\r\n')
    answer = both.test_client().post("/api/captions", data=body, content_type="multipart/form-data; boundary=xx",
                                     headers={"Authorization": "Bearer submit-token"})
    assert answer.status_code == 400, answer.get_data(as_text=True)


def test_the_reference_page_draws_the_document_from_this_origin_alone(sqlite_config):
    """Over real HTTP (werkzeug's server: the page needs no gunicorn), in Chromium, under the page's CSP."""
    server = make_server("127.0.0.1", 0, create_app(sqlite_config), threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with open_tabs() as tabs:
            page = new_tab(tabs)
            errors = collect_errors(page)
            hosts = set()
            page.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
            page.goto(url + "/api/docs")
            page.get_by_text("Receive a Runware result").wait_for()
            page.get_by_text("/api/tasks.{fmt}").wait_for()
    finally:
        server.shutdown()
    assert not errors, errors
    assert hosts == {urlsplit(url).netloc}, hosts
