"""In headless Chromium: the dashboard's charts are drawn, its view lives in the URL, and a task has a page.

Under gunicorn, on SQLite (the page does not depend on the store). The charts are
checked on their canvas: pixels of each series' colour, which only a drawn series
makes (axes and grid are grey). The view (range, filters, the open task) is put in
the URL's fragment, comes back on a reload and in another tab that opens the URL;
Back leaves a task's page. A task's page, opened from the table, shows a hostile
caption and label as text, under the CSP, with no element made and no script run. The thumbnail of an image
submitted as bytes is drawn beside its caption in the table and on its page.
Screenshots are kept with the test's output (its tmp_path).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest

from store.results import Delivery
from store.results import Result
from store.results import save_deliveries
from store.schema import tasks
from store.schema import utcnow
from store.submissions import NewTask
from store.submissions import queue_tasks
from tests.chromium import collect_errors
from tests.chromium import new_tab
from tests.chromium import wait_until
from tests.helpers import new_uuid
from tests.submitting import data_uri
from tests.test_dashboard import server  # noqa: F401  (fixture: the api under gunicorn)
from tests.test_dashboard import tabs  # noqa: F401  (fixture: headless Chromium)

HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script> a lighthouse'
HOURS = 30
"""Hours back from now that hold tasks: each three successes, two errors and a queued task (lines apart)."""

COLOURS = {"success": (0x1F, 0x8A, 0x4C), "error": (0xC0, 0x39, 0x2B), "accent": (0x2F, 0x5F, 0xD0)}
"""The page's colours (dashboard.css) that series are drawn in."""

PIXELS = """([selector, rgb]) => {
  const canvas = document.querySelector(selector);
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 200 && [0, 1, 2].every((c) => Math.abs(data[i + c] - rgb[c]) <= 12)) n += 1;
  }
  return n;
}"""
"""How many pixels of the canvas `selector` names are (nearly) of colour `rgb`."""

TEAL = (0, 128, 128)
"""The colour of the submitted image whose thumbnail the table and the task page show."""


def fill(engine) -> tuple[str, str]:
    """Tasks over the last HOURS hours, one with a hostile caption and label, and one queued with an image given as
    bytes (so with a thumbnail); the last two's taskUUIDs."""
    now = utcnow()
    rows = []
    for h in range(HOURS):
        at = now - timedelta(hours=h)
        base = {"source": "submitted", "model": "runware:150@2", "delivery_count": 0, "conflict": False,
                "created_at": at, "updated_at": at, "text": None, "cost": None, "error_code": None,
                "submitted_at": None, "result_at": None}
        rows += [
            *({**base, "task_uuid": new_uuid(), "status": "success", "text": f"caption {h}", "cost": Decimal("0.01"),
               "submitted_at": at - timedelta(seconds=2), "result_at": at} for _ in range(3)),
            *({**base, "task_uuid": new_uuid(), "status": "error", "error_code": "timeoutProvider",
               "submitted_at": at - timedelta(seconds=40), "result_at": at} for _ in range(2)),
            {**base, "task_uuid": new_uuid(), "status": "queued"},
        ]
    hostile = new_uuid()
    with engine.begin() as conn:
        conn.execute(tasks.insert(), rows)
        save_deliveries(conn, [Delivery("1-0", now, "10.1.2.3", 100, [Result(
            hostile, "success", now, text=HOSTILE, cost=Decimal("0.0019"), model="runware:150@2")],
            labels={"project": "<b>x</b>"})])
    pictured = new_uuid()
    with engine.begin() as conn:
        queue_tasks(conn, [NewTask(pictured, data_uri("PNG", "teal", (320, 200)), "teal.png")])
    return hostile, pictured


def sign_in(page, url: str) -> None:
    page.goto(url)
    page.fill("#token", "read-token")
    page.click("#login-form button[type=submit]")
    wait_until(page, "Number(document.body.dataset.refreshed) >= 1")


def fragment(page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).fragment)


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_charts_the_view_in_the_url_and_a_task_page(tabs, server, engine, tmp_path):  # noqa: F811
    hostile, pictured = fill(engine)
    page = new_tab(tabs)
    reported = collect_errors(page)
    sign_in(page, server.url + "/dashboard")

    # The charts: each series drawn on its canvas.
    for chart in ("chart-tasks", "chart-spend", "chart-latency"):
        wait_until(page, f"Number(document.querySelector('#{chart} .uplot')?.dataset.drawn) >= 1")
    drawn = {(chart, colour): page.evaluate(PIXELS, [f"#{chart} canvas", COLOURS[colour]])
             for chart, colour in (("chart-tasks", "success"), ("chart-tasks", "error"), ("chart-spend", "accent"),
                                   ("chart-latency", "accent"), ("chart-latency", "error"))}
    assert all(n > 30 for n in drawn.values()), drawn
    legend = page.evaluate("[...document.querySelectorAll('#chart-tasks .u-legend .u-label')].map(l => l.textContent)")
    assert legend == ["Time", "success", "error", "submitted", "queued"]
    page.screenshot(path=tmp_path / "charts.png", full_page=True)

    # The thumbnail of the image submitted as bytes, beside its caption in the table and on its page.
    row = f"#tasks tr[data-task-uuid=\"{pictured}\"]"
    wait_until(page, f"!!document.querySelector('{row} td.caption canvas.thumb[data-drawn]')")
    assert page.evaluate(PIXELS, [f"{row} canvas.thumb", TEAL]) == 160 * 100, "the whole thumbnail, in teal"
    page.click(f"{row} button.open-task")
    wait_until(page, "!!document.querySelector('#detail-thumb canvas.thumb[data-drawn]')")
    assert page.evaluate(PIXELS, ["#detail-thumb canvas.thumb", TEAL]) == 160 * 100
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    page.screenshot(path=tmp_path / "task-thumbnail.png")
    page.go_back()
    wait_until(page, "!document.getElementById('board').hidden")

    # The view goes into the URL, and a reload shows it again.
    page.select_option("#range", "30d")
    page.select_option("#status-filter", "success")
    page.fill("#search", "lighthouse")
    wait_until(page, f"JSON.stringify([...document.querySelectorAll('#tasks tbody tr')].map(r => r.dataset.taskUuid))"
                     f" === '[\"{hostile}\"]'")
    assert fragment(page) == {"range": ["30d"], "status": ["success"], "q": ["lighthouse"]}
    shared = page.url
    page.reload()
    wait_until(page, "Number(document.body.dataset.refreshed) >= 1")
    assert page.evaluate("['range', 'status-filter', 'search'].map(id => document.getElementById(id).value)") == [
        "30d", "success", "lighthouse"]
    wait_until(page, "document.querySelectorAll('#tasks tbody tr').length === 1")

    # A task's page, opened from the table: every string as text; its address is shareable; Back leaves it.
    page.click(f"#tasks tr[data-task-uuid=\"{hostile}\"] button.open-task")
    wait_until(page, "document.querySelectorAll('#timeline li').length === 1")
    assert page.evaluate("document.getElementById('board').hidden")
    assert page.text_content("#detail-caption") == HOSTILE
    assert page.text_content("#detail-labels") == "project=<b>x</b>"
    facts = page.evaluate("[...document.querySelectorAll('#detail-facts dd')].map(d => d.textContent)")
    assert facts[:3] == ["success", "0.0019 USD", "runware:150@2"]
    assert "webhook" in page.text_content("#timeline") and "set the result" in page.text_content("#timeline")
    assert page.evaluate("document.querySelectorAll('#task-detail img, #task-detail script, #task-detail b').length") \
        == 0
    assert page.evaluate("window.pwned") is None
    assert fragment(page)["task"] == [hostile]
    page.screenshot(path=tmp_path / "task-page.png", full_page=True)
    task_url = page.url
    page.go_back()
    wait_until(page, "!document.getElementById('board').hidden && document.getElementById('task-detail').hidden")
    assert page.url == shared

    # Another tab opening the shared addresses signs in, then shows the same view.
    other = new_tab(tabs)
    other_errors = collect_errors(other)
    sign_in(other, shared)
    assert other.evaluate("document.getElementById('status-filter').value") == "success"
    wait_until(other, "document.querySelectorAll('#tasks tbody tr').length === 1")
    other.goto(task_url)
    wait_until(other, "!document.getElementById('task-detail').hidden && "
                      "document.querySelectorAll('#timeline li').length === 1")
    assert other.text_content("#detail-caption") == HOSTILE
    other.click("#detail-close")
    wait_until(other, "!document.getElementById('board').hidden")
    assert "task" not in fragment(other)
    assert reported == [] and other_errors == []


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_fragment_that_names_nothing_known_is_ignored(tabs, server):  # noqa: F811
    """Values the controls do not offer, and a task that is no UUID, leave the view as it comes."""
    page = new_tab(tabs)
    errors = collect_errors(page)
    sign_in(page, server.url + "/dashboard#range=1y&status=lost&rows=7&task=nope")
    assert page.evaluate("['range', 'status-filter', 'page-size'].map(id => document.getElementById(id).value)") == [
        "7d", "", "20"]
    assert page.evaluate("document.getElementById('task-detail').hidden")
    assert "#" not in page.url, "the fragment was rewritten to the view shown"
    assert errors == []
