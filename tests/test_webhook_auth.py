"""The webhook secret in every form Runware documents for a webhookURL, and in the headers, never kept or shown.

Runware's documentation of `webhookURL` registers a receiver as
`https://api.example.com/webhooks/runware?token=your_auth_token` or
`https://api.example.com/webhooks/runware?apiKey=sk_live_abc123`; these tests use
those very values as the configured tokens, so each URL is posted exactly as written.
"""

from __future__ import annotations

import logging
import socket

import pytest
import redis
import requests
import sqlalchemy as sa

from config import Config
from receiver import create_app
from store.schema import deliveries
from store.schema import tasks
from tests.helpers import WEBHOOK
from tests.helpers import new_uuid
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import Gunicorn
from tests.support import run_worker
from workers.queues import DELIVERY_STREAM
from workers.queues import PERSIST_QUEUE

DOCUMENTED_TOKEN, DOCUMENTED_API_KEY = "your_auth_token", "sk_live_abc123"
"""The two secrets of Runware's webhookURL examples, configured here as the two tokens of a rotation."""

DOCUMENTED_URLS = (f"{WEBHOOK}?token={DOCUMENTED_TOKEN}", f"{WEBHOOK}?apiKey={DOCUMENTED_API_KEY}")
"""The documentation's URLs, path and query exactly as written."""

SECRETS = (DOCUMENTED_TOKEN, DOCUMENTED_API_KEY)
TOKENS = {"WEBHOOK_TOKENS": ",".join(SECRETS), "READ_TOKENS": "read-tok-8Kd3", "SUBMIT_TOKENS": "submit-tok-1Wq6"}


def form(kind: str, secret: str) -> tuple[str, dict[str, str]]:
    """The URL and headers of a webhook POST carrying `secret` in the form `kind`."""
    headers = {"Content-Type": "application/json"}
    if kind == "token":
        return f"{WEBHOOK}?token={secret}", headers
    if kind == "apiKey":
        return f"{WEBHOOK}?apiKey={secret}", headers
    if kind == "bearer":
        return WEBHOOK, {**headers, "Authorization": f"Bearer {secret}"}
    return WEBHOOK, {**headers, "X-API-Key": secret}


FORMS = ("token", "apiKey", "bearer", "x-api-key")


def entries(redis_url: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in redis.Redis.from_url(redis_url).xrange(DELIVERY_STREAM)]


def assert_no_secret_kept(fields: dict[bytes, bytes]) -> None:
    """A stream entry holds the body, the time and the address only: no query string, no header, no secret."""
    assert set(fields) == {b"body", b"at", b"ip"}, fields
    for value in fields.values():
        assert not any(secret.encode() in value for secret in SECRETS), fields


@pytest.fixture
def intake(config):
    env = {"APP_ENV": "development", "REDIS_URL": config.redis_url, "DATABASE_URL": config.database_url, **TOKENS}
    app = create_app(Config.from_env(env), kind="intake")
    yield app.test_client()
    app.extensions["redis"].close()


def post(client, url: str, headers: dict[str, str] | None = None):
    return client.post(url, data=wrapped(success(new_uuid())), content_type="application/json", headers=headers)


def test_each_documented_url_is_accepted_and_stored_without_its_secret(intake, config, engine, caplog):
    with caplog.at_level(logging.DEBUG):
        answers = [post(intake, url) for url in DOCUMENTED_URLS]
    assert [response.status_code for response in answers] == [202, 202], [response.json for response in answers]
    stream = entries(config.redis_url)
    assert len(stream) == 2
    for fields in stream:
        assert_no_secret_kept(fields)
    run_worker(config.redis_url, PERSIST_QUEUE)
    with engine.connect() as conn:
        rows = [conn.execute(sa.select(table)).all() for table in (tasks, deliveries)]
    assert [len(each) for each in rows] == [2, 2]
    kept = repr(rows) + "".join(response.get_data(as_text=True) for response in answers) + caplog.text
    assert not any(secret in kept for secret in SECRETS)


@pytest.mark.parametrize("wrong", ["", "sk_live_abc12", "sk_live_abc1234", "SK_LIVE_ABC123", "read-tok-8Kd3"])
def test_every_form_takes_every_token_of_the_rotation_and_no_other_secret(intake, config, wrong):
    for kind in FORMS:
        for secret in SECRETS:
            response = post(intake, *form(kind, secret))
            assert response.status_code == 202, (kind, response.json)
        response = post(intake, *form(kind, wrong))
        assert response.status_code == 401, kind
        assert response.json["error"]["message"] == "missing or invalid token"
    stream = entries(config.redis_url)
    assert len(stream) == len(FORMS) * len(SECRETS)
    for fields in stream:
        assert_no_secret_kept(fields)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic eW91cl9hdXRoX3Rva2Vu"},
                                     {"X-Api-Token": DOCUMENTED_TOKEN}])
def test_no_secret_in_a_documented_form_is_401(intake, config, headers):
    """Runware's tracking-parameters URL, with no secret, or one in a form that is not the webhook secret's."""
    url = f"{WEBHOOK}?projectId=proj_789&userId=12345"
    response = post(intake, url, headers)
    assert response.status_code == 401
    assert response.json["error"]["message"] == "missing or invalid token"
    assert entries(config.redis_url) == []
    assert post(intake, url, {**headers, "X-API-Key": DOCUMENTED_API_KEY}).status_code == 202


def test_parameter_names_are_matched_in_any_case(intake, config):
    """`?APIKEY=` or `?Token=` is the secret too, so it can never be mistaken for anything else."""
    for url in (f"{WEBHOOK}?APIKEY={DOCUMENTED_API_KEY}", f"{WEBHOOK}?Token={DOCUMENTED_TOKEN}"):
        assert post(intake, url).status_code == 202
    assert len(entries(config.redis_url)) == 2


@pytest.mark.parametrize("url, headers", [
    (f"{WEBHOOK}?apiKey={DOCUMENTED_API_KEY}", {"X-API-Key": DOCUMENTED_API_KEY}),
    (f"{WEBHOOK}?apiKey={DOCUMENTED_TOKEN}&APIKEY={DOCUMENTED_TOKEN}",
     {"Authorization": f"Bearer {DOCUMENTED_TOKEN}", "X-API-Key": DOCUMENTED_TOKEN}),
])
def test_the_same_secret_in_several_forms_is_accepted(intake, config, url, headers):
    response = post(intake, url, headers)
    assert response.status_code == 202, response.json


@pytest.mark.parametrize("url, headers", [
    (f"{WEBHOOK}?token={DOCUMENTED_TOKEN}&apiKey={DOCUMENTED_API_KEY}", {}),  # both valid, but not the same
    (f"{WEBHOOK}?token={DOCUMENTED_TOKEN}&token=stale", {}),
    (f"{WEBHOOK}?apiKey={DOCUMENTED_API_KEY}", {"X-API-Key": "stale"}),
    (f"{WEBHOOK}?token=", {"Authorization": f"Bearer {DOCUMENTED_TOKEN}"}),
    (WEBHOOK, {"Authorization": f"Bearer {DOCUMENTED_TOKEN}", "X-API-Key": DOCUMENTED_API_KEY}),
])
def test_different_secrets_in_one_request_are_401_naming_neither(intake, config, url, headers):
    response = post(intake, url, headers)
    assert response.status_code == 401
    assert response.json["error"]["message"] == "the webhook secret is given more than once with different values"
    assert not any(secret in response.get_data(as_text=True) for secret in SECRETS)
    assert entries(config.redis_url) == []


def test_error_answers_never_show_the_secret(intake):
    cases = [
        ("POST", WEBHOOK, b"{", "application/json", 400),
        ("POST", WEBHOOK, b"{}", "text/plain", 415),
        ("POST", WEBHOOK, b'{"data": [{"taskUUID": "nope"}]}', "application/json", 422),
        ("POST", WEBHOOK, b"x" * 2_000_000, "application/json", 413),
        ("GET", WEBHOOK, b"", "application/json", 405),
        ("POST", f"{WEBHOOK}/more", b"{}", "application/json", 404),
    ]
    for method, path, body, content_type, status in cases:
        response = intake.open(f"{path}?apiKey={DOCUMENTED_API_KEY}", method=method, data=body,
                               content_type=content_type, headers={"X-API-Key": DOCUMENTED_API_KEY})
        assert response.status_code == status, (path, body[:20], response.status_code)
        assert DOCUMENTED_API_KEY not in response.get_data(as_text=True)


def raw(port: int, data: bytes) -> int:
    """Send `data` as it is (a malformed request) and return the answer's status."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        return int(sock.recv(4096).split(b" ", 2)[1])


@pytest.mark.slow
def test_real_gunicorn_accepts_every_form_and_logs_no_secret(redis_url, sqlite_url, tmp_path):
    env = {"APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": sqlite_url, **TOKENS,
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "LOG_LEVEL": "debug"}
    server = Gunicorn(env, workers=1, kind="intake").start()
    try:
        def status(path: str, headers: dict[str, str]) -> int:
            return requests.post(server.url + path, data=wrapped(success(new_uuid())), headers=headers).status_code

        plain = {"Content-Type": "application/json"}
        assert [status(url, plain) for url in DOCUMENTED_URLS] == [202, 202]
        assert [status(*form(kind, DOCUMENTED_API_KEY)) for kind in FORMS] == [202] * 4
        assert [status(*form(kind, "sk_live_wrong")) for kind in FORMS] == [401] * 4
        assert status(f"{WEBHOOK}?token={DOCUMENTED_TOKEN}", {**plain, "X-API-Key": DOCUMENTED_API_KEY}) == 401
        assert status(f"{WEBHOOK}?projectId=proj_789&userId=12345", plain) == 401
        # Malformed requests, which gunicorn's error log quotes: the URI, a header line without a colon.
        assert raw(server.port, f"POST {DOCUMENTED_URLS[1]} HTTP/1.1\r\nHost: x\r\n"
                                f"X-API-Key {DOCUMENTED_API_KEY}\r\n\r\n".encode()) == 400
        assert raw(server.port, f"POST {DOCUMENTED_URLS[0]}&x={'a' * 5000} HTTP/1.1\r\n\r\n".encode()) == 414
        assert raw(server.port, f"POST {WEBHOOK} HTTP/1.1\r\nHost: x\r\n"
                                f"Authorization Bearer {DOCUMENTED_TOKEN}\r\n\r\n".encode()) == 400
    finally:
        server.stop()
    stored = entries(redis_url)
    assert len(stored) == 6
    for fields in stored:
        assert_no_secret_kept(fields)
    output = server.output()
    assert "POST /webhooks/runware" in output and "Invalid HTTP Header" in output
    for secret in SECRETS:
        assert secret not in output, secret
