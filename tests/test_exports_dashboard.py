"""In headless Chromium: the dashboard's export buttons carry the table's filters, and a task's timeline is text.

Under gunicorn, on SQLite (the page's behaviour does not depend on the store): the
buttons fetch `GET /api/tasks.csv` / `.ndjson` with the filters shown and save what
came; clicking a task's UUID shows its history, a hostile caption and a hostile
error rendered as inert text (no element made, no script run), under the CSP.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
import requests

from store.results import Delivery
from store.results import Result
from store.results import save_deliveries
from store.schema import utcnow
from tests.chromium import collect_errors
from tests.chromium import new_tab
from tests.chromium import wait_until
from tests.helpers import new_uuid
from tests.test_dashboard import server  # noqa: F401  (fixture: the api under gunicorn)
from tests.test_dashboard import tabs  # noqa: F401  (fixture: headless Chromium)

HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script> a cat'
READ = {"Authorization": "Bearer read-token"}

KEEP_BLOBS = """() => {
  const make = URL.createObjectURL;
  window.blobs = [];
  URL.createObjectURL = (blob) => { window.blobs.push(blob); return make(blob); };
}"""
"""Keeps the blobs the page makes object URLs of (the downloads of this default context are not Playwright's)."""

SAVED = "async () => await window.blobs[window.blobs.length - 1].text()"


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_export_buttons_and_a_tasks_timeline(tabs, server, engine, tmp_path):  # noqa: F811
    now = utcnow()
    hostile = new_uuid()
    with engine.begin() as conn:
        save_deliveries(conn, [
            Delivery("1-0", now - timedelta(seconds=3), "10.1.2.3", 100, [Result(
                hostile, "error", now - timedelta(seconds=3), error_code="<b>bad</b>",
                error_message='<img src=y onerror="window.pwned=3">')]),
            Delivery("2-0", now - timedelta(seconds=2), "10.1.2.4", 100, [Result(
                hostile, "success", now - timedelta(seconds=2), text=HOSTILE, cost=Decimal("0.0019"))]),
            *(Delivery(f"{3 + i}-0", now, "10.1.2.5", 100, [Result(new_uuid(), "error" if i % 2 else "success", now,
                                                                   text=f"=dog {i}", error_code="timeoutProvider")])
              for i in range(12)),
            *(Delivery(f"{20 + i}-0", now, "10.1.2.6", 100, [Result(new_uuid(), "error", now, error_code="other")])
              for i in range(3)),
        ])

    page = new_tab(tabs)
    reported = collect_errors(page)
    page.goto(server.url + "/dashboard")
    page.fill("#token", "read-token")
    page.click("#login-form button[type=submit]")
    wait_until(page, "Number(document.body.dataset.refreshed) >= 1")

    # The buttons export what the table's filters choose (the file saved is the blob the page links to).
    page.evaluate(KEEP_BLOBS)
    page.select_option("#status-filter", "error")
    wait_until(page, "document.querySelectorAll('#tasks tbody tr').length === 9")
    page.fill("#search", "dog")
    wait_until(page, "document.querySelectorAll('#tasks tbody tr').length === 6")
    for fmt in ("csv", "ndjson"):
        with page.expect_response(lambda r, fmt=fmt: urlsplit(r.url).path == f"/api/tasks.{fmt}") as answer:
            page.click(f"button.export[data-format={fmt}]")
        sent = answer.value
        assert parse_qs(urlsplit(sent.url).query) == {"status": ["error"], "q": ["dog"]}
        assert sent.request.headers["authorization"] == "Bearer read-token"
        direct = requests.get(f"{server.url}/api/tasks.{fmt}", params={"status": "error", "q": "dog"},
                              headers=READ, timeout=10)
        wait_until(page, f"document.getElementById('export-status').textContent.endsWith('.{fmt}')")
        assert page.evaluate(SAVED).encode() == direct.content
        assert direct.content.count(b"\n") == 6 + (fmt == "csv")
        assert page.evaluate("document.getElementById('export-status').textContent").startswith("Saved tasks-")
    assert "token" not in sent.url

    # A task's history, opened from the table, as text.
    page.select_option("#status-filter", "")
    page.fill("#search", "")
    wait_until(page, f"!!document.querySelector('#tasks tr[data-task-uuid=\"{hostile}\"] button.open-task')")
    page.click(f"#tasks tr[data-task-uuid=\"{hostile}\"] button.open-task")
    wait_until(page, "document.querySelectorAll('#timeline li').length === 2")
    items = page.evaluate("[...document.querySelectorAll('#timeline li')].map(li => li.textContent)")
    assert "webhook" in items[0] and "error" in items[0] and "set the result" in items[0]
    assert '<b>bad</b>: <img src=y onerror="window.pwned=3">' in items[0] and "from 10.1.2.3" in items[0]
    assert "success" in items[1] and "set the result" in items[1] and HOSTILE in items[1]
    assert "from 10.1.2.4 · stored" in items[1]
    assert HOSTILE in page.evaluate("document.getElementById('detail-summary').textContent")
    made = "document.querySelectorAll('#task-detail img, #task-detail script, #task-detail b').length"
    assert page.evaluate(made) == 0
    assert page.evaluate("window.pwned") is None
    page.screenshot(path=tmp_path / "timeline.png", full_page=True)
    page.click("#detail-close")
    assert page.evaluate("document.getElementById('task-detail').hidden")
    assert reported == []
