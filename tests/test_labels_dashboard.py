"""Labels on the dashboard, in headless Chromium: chips on each task (conflicts marked), the label filter
beside the others, and the spend-by-label table for a chosen key; a label full of markup stays text."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from store.results import Delivery
from store.results import Result
from store.results import save_deliveries
from store.schema import utcnow
from tests.chromium import collect_errors
from tests.chromium import new_tab
from tests.chromium import wait_until
from tests.helpers import new_uuid
from tests.test_dashboard import server  # noqa: F401  (fixture)
from tests.test_dashboard import tabs  # noqa: F401  (fixture)

MARKUP = '<img src=x onerror="window.__xss=1">'
ROWS = "[...document.querySelectorAll('#tasks tbody tr')].map(r => r.dataset.taskUuid).filter(Boolean)"
GROUPS = "[...document.querySelectorAll('#label-groups tbody tr')].map(r => [...r.cells].map(c => c.textContent))"


def seed(engine) -> dict[str, str]:
    """Three successes of proj_a, one of proj_b given proj_c too (a conflict), one labelled with markup,
    and an error without labels."""
    at = utcnow() - timedelta(minutes=10)
    made = {name: new_uuid() for name in ("a1", "a2", "a3", "b", "markup", "bare")}

    def one(n, task, labels, seconds=0, status="success"):
        when = at + timedelta(seconds=seconds)
        item = (Result(task, "success", when, text=f"caption {n}", cost=Decimal("0.25")) if status == "success"
                else Result(task, "error", when, error_code="failed"))
        return Delivery(f"d-{n}", when, None, 10, [item], [], labels)

    batch = [one(n, made[f"a{n}"], {"projectId": "proj_a", "userId": f"u{n % 2}"}, n) for n in (1, 2, 3)]
    batch += [one(4, made["b"], {"projectId": "proj_b", "userId": "u1"}, 4),
              one(5, made["b"], {"projectId": "proj_c"}, 5),
              one(6, made["markup"], {"projectId": MARKUP}, 6),
              one(7, made["bare"], {}, 7, status="error")]
    with engine.begin() as conn:
        save_deliveries(conn, batch)
    return made


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_labels_on_the_dashboard(tabs, server, engine):  # noqa: F811
    made = seed(engine)
    page = new_tab(tabs)
    reported = collect_errors(page)
    page.goto(server.url + "/dashboard")
    page.fill("#token", "read-token")
    page.click("#login-form button[type=submit]")
    wait_until(page, "document.querySelectorAll('#label-groups tbody tr.value').length === 3")

    # Chips: key=value as text, the conflicting key marked; the markup is text and nothing ran.
    def chips(task: str) -> list[list]:
        return page.evaluate(f"[...document.querySelectorAll('tr[data-task-uuid=\"{task}\"] .chip')]"
                             ".map(c => [c.textContent, c.classList.contains('conflict')])")

    assert chips(made["a1"]) == [["projectId=proj_a", False], ["userId=u1", False]]
    assert chips(made["b"]) == [["projectId=proj_b", True], ["userId=u1", False]]
    assert chips(made["markup"]) == [[f"projectId={MARKUP}", False]]
    assert chips(made["bare"]) == []
    assert page.evaluate("document.querySelectorAll('#tasks img, #label-groups img').length") == 0
    assert page.evaluate("typeof window.__xss") == "undefined"

    # Spend by label: the key with most tasks first, its values largest first, then the tasks without it.
    assert page.evaluate("[...document.getElementById('group-key').options].map(o => o.value)") == [
        "projectId", "userId"]
    assert page.evaluate(GROUPS) == [
        ["proj_a", "3", "3", "0", "100.0%", "$0.75"],
        [MARKUP, "1", "1", "0", "100.0%", "$0.25"],
        ["proj_b", "1", "1", "0", "100.0%", "$0.25"],
        ["without projectId", "1", "0", "1", "0.0%", "$0.00"],
    ]
    page.select_option("#group-key", "userId")
    wait_until(page, f"JSON.stringify({GROUPS}[0]) === JSON.stringify(['u1', '3', '3', '0', '100.0%', '$0.75'])")
    assert page.evaluate(GROUPS)[1:] == [["u0", "1", "1", "0", "100.0%", "$0.25"],
                                         ["without userId", "2", "1", "1", "50.0%", "$0.25"]]

    # The label filter, alone and with the status filter; a bad key is refused with the server's reason.
    page.fill("#label-key", "projectId")
    page.fill("#label-value", "proj_a")
    wait_until(page, f"{ROWS}.length === 3")
    assert sorted(page.evaluate(ROWS)) == sorted(made[f"a{n}"] for n in (1, 2, 3))
    page.select_option("#status-filter", "error")
    wait_until(page, "document.querySelector('#tasks td.empty') !== null")
    page.select_option("#status-filter", "")
    page.fill("#label-value", MARKUP)
    wait_until(page, f"JSON.stringify({ROWS}) === JSON.stringify([{made['markup']!r}])")
    page.fill("#label-key", "bad key")
    wait_until(page, "document.getElementById('status-line').dataset.state === 'stale'")
    assert "label.bad key" in page.text_content("#status-line")
    assert [e for e in reported if "status of 400" not in e] == []
