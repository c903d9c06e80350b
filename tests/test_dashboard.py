"""The built-in dashboard: a shell page under a strict policy, and, in headless Chromium, the real thing.

The browser test runs the app under gunicorn, signs in through the form, and
checks the figures, the task table, filters, paging and auto-refresh against
the hand-worked store of `tests.reporting_data`, and that a caption full of
markup shows up as text. The polling tests hold or answer the page's API
requests at the browser's network (Playwright's `page.route`) and check that
polls never overlap, space out after slow answers and refusals (honouring
Retry-After, on Playwright's clock), come back to the interval after a good
answer, and stop while the tab is hidden. They need Chromium: without it they
are skipped, unless REQUIRE_BROWSER=1 (as in CI), when they fail.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlsplit

import pytest

from receiver.dashboard import POLL_INTERVAL_MS
from store.schema import tasks
from store.schema import utcnow
from tests import reporting_data as data
from tests.chromium import Traffic
from tests.chromium import collect_errors
from tests.chromium import new_tab
from tests.chromium import open_tabs
from tests.chromium import wait_until
from tests.conftest import TOKENS
from tests.reporting_data import UUID
from tests.support import ROOT
from tests.support import Gunicorn

SCRIPTS = sorted((ROOT / "receiver" / "static" / "dashboard").glob("*.js"))
"""The page's ES modules (main.js first to load)."""


def test_page_is_a_shell_under_a_strict_policy(client):
    response = client.get("/dashboard")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    policy = dict(d.strip().split(" ", 1) for d in response.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["object-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert policy["require-trusted-types-for"] == "'script'"
    assert "unsafe" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"

    html = response.get_data(as_text=True)
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.DOTALL)
    assert scripts, "the page loads its script"
    for attributes, body in scripts:
        assert 'src="/dashboard/static/' in attributes and not body.strip(), "no inline script"
    assert not re.search(r"\sstyle\s*=", html), "no inline style"
    assert not re.search(r"\son[a-z]+\s*=", html, flags=re.IGNORECASE), "no inline event handler"
    assert 'href="http' not in html and 'src="http' not in html, "nothing from another origin"


def test_the_page_needs_no_token_but_its_data_does(client):
    assert client.get("/dashboard").status_code == 200
    assert client.get("/api/stats").status_code == 401
    assert client.get("/api/tasks").status_code == 401


@pytest.mark.parametrize("path, mimetype", [
    ("static/main.js", "text/javascript"), ("static/charts.js", "text/javascript"),
    ("static/dashboard.css", "text/css"), ("static/favicon.svg", "image/svg+xml"),
    ("vendor/uplot/uPlot.esm.js", "text/javascript"), ("vendor/uplot/uPlot.min.css", "text/css")])
def test_static_files_are_served_with_nosniff(client, path, mimetype):
    response = client.get(f"/dashboard/{path}")
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    response.close()


def test_the_vendored_chart_library_keeps_its_licence_and_turns_no_string_into_markup():
    vendored = ROOT / "receiver" / "static" / "vendor" / "uplot"
    assert "MIT License" in (vendored / "LICENSE").read_text()
    source = (vendored / "uPlot.esm.js").read_text()
    assert "Leon Sorokin" in source.split("*/", 1)[0]
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "Function("):
        assert sink not in source, sink


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_the_script_never_turns_strings_into_markup_or_logs(script):
    source = script.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(",
                 "localStorage", "console.", "document.cookie"):
        assert sink not in source, sink
    if script.name == "dom.js":
        assert "node.textContent = String(text)" in source, "elements get their text as text"


# --- in Chromium --------------------------------------------------------------------------------


@pytest.fixture
def tabs():
    with open_tabs() as context:
        yield context


@pytest.fixture
def server(config):
    env = {"APP_ENV": "development", "REDIS_URL": config.redis_url, "DATABASE_URL": config.database_url, **TOKENS}
    gunicorn = Gunicorn(env, workers=2)
    try:
        gunicorn.start()
        yield gunicorn
    finally:
        gunicorn.stop()


def fresh_task(n: int, when, **values) -> dict:
    row = {"task_uuid": f"ffffffff-0000-4000-8000-{n:012x}", "status": "queued", "source": "external",
           "created_at": when, "updated_at": when, "delivery_count": 0, "conflict": False}
    row.update(values)
    return row


ROWS = "[...document.querySelectorAll('#tasks tbody tr')].map(r => r.dataset.taskUuid)"


def shown(page) -> list[str]:
    return page.evaluate(ROWS)


def texts(page, *ids: str) -> list[str]:
    return [page.text_content(f"#{id_}") for id_ in ids]


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dashboard_in_chromium(tabs, server, engine, tmp_path):
    data.load(engine)
    now = utcnow()
    task_j = fresh_task(0, now, status="success", text="fresh result", cost=Decimal("0.25"), result_at=now,
                        delivery_count=1)
    with engine.begin() as conn:
        conn.execute(tasks.insert(), [task_j])

    page = new_tab(tabs)
    reported = collect_errors(page)
    requests = []
    page.on("request", lambda request: requests.append(request))
    page.goto(server.url + "/dashboard")
    wait_until(page, "!document.getElementById('login').hidden")
    assert page.evaluate("document.getElementById('board').hidden")
    page.screenshot(path=tmp_path / "sign-in.png")

    # A wrong token is refused and not kept.
    page.fill("#token", "wrong-token")
    page.click("#login-form button[type=submit]")
    wait_until(page, "document.getElementById('login-error').textContent.includes('refused')")
    assert page.evaluate("sessionStorage.length") == 0

    # The read token opens the board; the default range (7 days) holds task J alone.
    page.fill("#token", "read-token")
    page.click("#login-form button[type=submit]")
    wait_until(page, "Number(document.body.dataset.refreshed) >= 1")
    assert page.evaluate("document.getElementById('token').value") == ""
    assert texts(page, "count-total", "count-success", "spend-today", "spend-range") == ["1", "1", "$0.25", "$0.25"]
    days = page.evaluate("[...document.querySelectorAll('#days tbody tr')].map(r => r.dataset.day)")
    assert len(days) == 7 and days[0] == now.date().isoformat()

    # All time: the hand-worked figures, plus J.
    page.select_option("#range", "all")
    wait_until(page, "document.getElementById('count-total').textContent === '10'")
    assert texts(page, "count-success", "count-error", "count-submitted", "count-queued", "count-sources") == [
        "6", "1", "2", "1", "5 / 5"]
    assert texts(page, "spend-range", "conflicts", "dead-letters", "deliveries") == ["$1.786468", "1", "3 (2)", "4"]
    assert page.evaluate("document.getElementById('spend-range').title").startswith("1.7864678901 USD exactly")
    assert page.text_content("#waiting").startswith("2 · oldest ")
    day_rows = page.evaluate("[...document.querySelectorAll('#days tbody tr')]"
                             ".map(r => [...r.cells].slice(0, 5).map(c => c.textContent))")
    assert day_rows == [[now.date().isoformat(), "1", "1", "0", "$0.25"],
                        ["2026-03-02", "4", "3", "1", "$1.434568"],
                        ["2026-03-01", "2", "2", "0", "$0.1019"]]

    # The latest tasks, newest first; the caption full of markup is text, and nothing ran.
    assert shown(page) == [task_j["task_uuid"], *(UUID[n] for n in "HGIEDFCBA")]
    caption = page.evaluate(f"document.querySelector('tr[data-task-uuid=\"{UUID['A']}\"] td.caption').textContent")
    assert caption == data.XSS_TEXT
    assert page.evaluate("document.querySelectorAll('#tasks img, #tasks script').length") == 0
    assert page.evaluate("typeof window.__xss") == "undefined"
    page.screenshot(path=tmp_path / "dashboard.png", full_page=True)

    # The status filter.
    page.select_option("#status-filter", "error")
    wait_until(page, f"JSON.stringify({ROWS}) === '[\"{UUID['D']}\"]'")
    assert page.evaluate("document.querySelector('#tasks td.caption').textContent") == (
        "timeoutProvider: the provider timed out")
    page.select_option("#status-filter", "")
    wait_until(page, f"{ROWS}.length === 10")

    # Auto-refresh shows tasks that arrive later; paging walks through them.
    later = [fresh_task(n, now + timedelta(seconds=n)) for n in range(1, 16)]
    with engine.begin() as conn:
        conn.execute(tasks.insert(), later)
    wait_until(page, "document.getElementById('count-total').textContent === '25'", timeout=10_000)
    wait_until(page, f"{ROWS}.length === 20")
    assert shown(page)[:16] == [t["task_uuid"] for t in reversed(later)] + [task_j["task_uuid"]]
    page.click("#next-page")
    wait_until(page, "document.getElementById('page-label').textContent === 'Page 2'")
    wait_until(page, f"{ROWS}.length === 5")
    assert shown(page) == [UUID[n] for n in "DFCBA"]
    assert page.evaluate("document.getElementById('next-page').disabled")
    page.click("#prev-page")
    wait_until(page, f"{ROWS}.length === 20 && document.getElementById('page-label').textContent === 'Page 1'")

    # Signing out forgets the token.
    page.click("#sign-out")
    wait_until(page, "!document.getElementById('login').hidden")
    assert page.evaluate("sessionStorage.length") == 0

    # The token only ever travelled in the Authorization header, never in a URL or a log line.
    assert not [r.url for r in requests if "token" in r.url]
    api_calls = [r for r in requests if "/api/" in r.url]
    assert api_calls and all(r.all_headers().get("authorization", "").startswith("Bearer ") for r in api_calls)
    assert [e for e in reported if "status of 401" not in e] == []
    log = server.output()
    assert "GET /dashboard" in log or "/dashboard" in log
    assert "GET /dashboard" in log, "the access log names the page's request (method and path)"
    assert "read-token" not in log and "wrong-token" not in log


# --- polling responsibly ------------------------------------------------------------------------

POLL_SECONDS = POLL_INTERVAL_MS / 1000

PANELS = 6
"""Requests a poll of the board makes in turn: stats, the hourly and the daily series, tasks, intake, labels."""


def script_constant(name: str) -> float:
    """A number the dashboard's script defines (`const NAME = 1234;`)."""
    source = (ROOT / "receiver" / "static" / "dashboard" / "poll.js").read_text()
    return float(re.search(rf"\bconst {name} = ([\d.]+);", source).group(1))


def signed_in(tabs, server, clock: bool = False):
    """A new tab showing the board, signed in with the read token; with `clock`, on Playwright's clock."""
    page = new_tab(tabs)
    if clock:
        page.clock.install()
    page.goto(server.url + "/dashboard")
    page.fill("#token", "read-token")
    page.click("#login-form button[type=submit]")
    wait_until(page, "Number(document.body.dataset.refreshed) >= 1")
    return page


def status(page) -> tuple[str, str]:
    """The status line: its state and its text."""
    return tuple(page.evaluate("(line => [line.dataset.state, line.textContent])"
                               "(document.getElementById('status-line'))"))


def is_stats(request) -> bool:
    return urlsplit(request.url).path == "/api/stats"


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_slow_answers_never_overlap_and_space_the_polls_out(tabs, server, engine):
    data.load(engine)
    page = signed_in(tabs, server)
    traffic = Traffic(page, hold=True)
    slow = 0.6 * POLL_SECONDS  # each answer held this long: a poll (PANELS requests in turn) outlasts the interval

    def polls() -> list[float]:
        """When each poll started: a poll opens with /api/stats."""
        return [t for t, request in traffic.sent if is_stats(request)]

    def done(n: int):
        """A check: n polls started, every request answered."""
        return lambda: len(polls()) >= n and traffic.in_flight == 0 and not traffic.held

    # A slow poll: the next one waits more than the interval.
    traffic.run(PANELS * slow + 2 * POLL_SECONDS, slow, until=done(1), what="a first poll, answered")
    first_end = max(traffic.ended.values())
    traffic.run(PANELS * slow + 6 * POLL_SECONDS, slow, until=lambda: len(polls()) >= 2, what="a second poll")
    assert polls()[1] - first_end > 2 * POLL_SECONDS - 0.5, "backed off after a slow poll"
    assert status(page)[0] == "slow"

    # While the second poll is in flight, the user changes the range and the tab is hidden and shown:
    # nothing starts until it ends, then one poll with the new range follows at once.
    page.select_option("#range", "all")
    other = new_tab(tabs)
    assert page.evaluate("document.visibilityState") == "hidden"
    page.bring_to_front()
    other.close()
    traffic.run(2 * PANELS * slow + 2 * POLL_SECONDS, slow, until=lambda: len(polls()) >= 3, what="a third poll")
    second_end = max(traffic.ended.values())
    assert polls()[2] - second_end < 1, "the poll asked for meanwhile ran as soon as the last one ended"
    third = [request for t, request in traffic.sent if is_stats(request)][2]
    assert "since" not in urlsplit(third.url).query, "the third poll asks for all time"

    # Quick answers again: back to the normal interval.
    traffic.run(6 * POLL_SECONDS, until=done(4), what="a fourth poll, answered")
    third_end = max(traffic.ended[r] for t, r in traffic.sent if t < polls()[3])
    assert POLL_SECONDS - 0.5 < polls()[3] - third_end < 2 * POLL_SECONDS - 0.5
    wait_until(page, "document.getElementById('count-total').textContent === '9'")
    wait_until(page, "document.getElementById('status-line').dataset.state === 'fresh'")
    assert traffic.most_in_flight == 1, "never two requests in flight"


STEP_MS = 250
"""How far Playwright's clock moves at a time, near the moment a poll is due, in the test of refusals."""

LATE = 3 * STEP_MS / 1000
"""How much later than due a poll may be seen (the clock's step, and the request's way to the test)."""

REFUSALS = [(503, "1"), (503, "1"), (503, "30"), (429, None), (503, "1"), (503, "1")]
"""The answers to the polls of that test, in turn, before the server answers again: status, Retry-After."""


def settle(page, before: tuple[str, str]) -> None:
    """Wait (in real time, the page's clock stands still) until the status line is no longer `before`."""
    for _ in range(500):
        if status(page) != before:
            return
        page.wait_for_timeout(20)
    raise AssertionError(f"the status line stayed {before}")


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_refusals_space_the_polls_out_and_honour_retry_after(tabs, server, engine, tmp_path):
    data.load(engine)
    cap, jitter = script_constant("MAX_BACKOFF_MS") / 1000, script_constant("BACKOFF_JITTER")
    page = signed_in(tabs, server, clock=True)
    polls = page.evaluate("Number(document.body.dataset.refreshed || 0)")
    page.select_option("#range", "all")
    wait_until(page, "document.getElementById('count-total').textContent === '9'")
    # The whole poll ends (every panel drawn) before requests are held: the first one held opens the next poll.
    wait_until(page, f"Number(document.body.dataset.refreshed || 0) > {polls}")
    traffic = Traffic(page, hold=True)
    page.clock.pause_at(page.evaluate("Date.now()") / 1000 + 1)  # in seconds; a moment ahead

    def next_request(after: float) -> float:
        """Move the clock on to half a second before `after` seconds and check that nothing was sent yet,
        then on in steps until the page sends a request; how long that took, in seconds."""
        ms = max(0, int(after * 1000) - 500)
        if ms:
            page.clock.run_for(ms)
            page.wait_for_timeout(300)  # real time, for a request to reach the test
            assert not traffic.held, f"a request before {after} s"
        while not traffic.held:
            assert ms < 2 * cap * 1000, "no request"
            page.clock.run_for(STEP_MS)
            ms += STEP_MS
            page.wait_for_timeout(150)
        return ms / 1000

    next_request(0)
    gaps, expected = [], []
    for n, (code, retry_after) in enumerate(REFUSALS, start=1):
        route = traffic.held.pop(0)[1]
        assert is_stats(route.request)
        before = status(page)
        route.fulfill(status=code, headers={"Retry-After": retry_after} if retry_after else {},
                      json={"error": {"status": code, "message": "busy"}})
        settle(page, before)
        state, text = status(page)
        assert state == "waiting" and text.startswith(f"The server asked to wait (HTTP {code})"), text
        assert "the figures are from " in text
        assert page.evaluate("document.getElementById('board').classList.contains('stale')")
        assert page.text_content("#count-total") == "9", "the figures stay, marked stale"
        if n == 1:
            page.screenshot(path=tmp_path / "refused.png")
        expected.append(max(min(cap, POLL_SECONDS * 2 ** n), float(retry_after or 0)))
        gaps.append(next_request(expected[-1]))
    for gap, wait in zip(gaps, expected):
        assert wait <= gap < wait * (1 + jitter) + LATE, (gaps, expected)
    assert gaps[2] >= 30 > min(cap, POLL_SECONDS * 2 ** 3), "Retry-After beyond the backoff is honoured"
    assert gaps[:4] == sorted(gaps[:4]) and gaps[4] >= cap and gaps[5] < cap * (1 + jitter) + 1, gaps

    # The server answers again: figures are fresh, and the next poll comes after the normal interval.
    refreshed = page.evaluate("Number(document.body.dataset.refreshed)")
    for _ in range(500):
        if page.evaluate("Number(document.body.dataset.refreshed)") > refreshed:
            break
        for _, route in traffic.held:
            route.continue_()
        traffic.held.clear()
        page.wait_for_timeout(20)
    else:
        raise AssertionError("no refresh once the server answered")
    assert status(page)[0] == "fresh"
    assert not page.evaluate("document.getElementById('board').classList.contains('stale')")
    assert POLL_SECONDS <= next_request(POLL_SECONDS) < POLL_SECONDS + LATE


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_hidden_tab_does_not_poll_and_refreshes_when_shown(tabs, server):
    page = signed_in(tabs, server)
    traffic = Traffic(page)
    new_tab(tabs)
    assert page.evaluate("document.visibilityState") == "hidden"
    traffic.run(2 * POLL_SECONDS, until=lambda: status(page)[0] == "paused" and traffic.in_flight == 0,
                what="paused, nothing in flight")
    sent = len(traffic.sent)  # a poll already under way when the tab was hidden may have ended meanwhile
    traffic.run(2.5 * POLL_SECONDS)
    assert len(traffic.sent) == sent, "no request from a hidden tab"

    page.bring_to_front()
    shown = time.monotonic()
    traffic.run(2 * POLL_SECONDS, until=lambda: len(traffic.sent) > sent, what="a request once shown")
    assert traffic.sent[sent][0] - shown < POLL_SECONDS / 3, "refreshed at once, not at the next interval"
    wait_until(page, "document.getElementById('status-line').dataset.state === 'fresh'")
