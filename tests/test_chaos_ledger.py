"""The chaos run's accounting (bench/chaos.py) finds a lost or doubled task or delivery."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.chaos import Ledger
from bench.chaos import balance

SUBMITTED, EXTERNAL = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


def world():
    """A run where everything went right: one submitted task (two webhook copies), one external result."""
    ledger = Ledger()
    ledger.submitted[SUBMITTED] = 1
    ledger.expected[EXTERNAL] = {"taskUUID": EXTERNAL, "text": "ext", "cost": 0.002}
    ledger.delivered["2-0"] = EXTERNAL
    ledger.attempts[EXTERNAL] = 2
    stored = {
        SUBMITTED: {"status": "success", "source": "submitted", "text": "cap", "cost": "0.0019",
                    "error_code": None, "delivery_count": 2},
        EXTERNAL: {"status": "success", "source": "external", "text": "ext", "cost": "0.002",
                   "error_code": None, "delivery_count": 1},
    }
    logged = Counter({SUBMITTED: 2, EXTERNAL: 1})
    ids = {"1-0", "1-1", "2-0"}
    emulated = {SUBMITTED: {"taskUUID": SUBMITTED, "status": "success", "webhook": "delivered",
                            "result": {"text": "cap", "cost": 0.0019}}}
    attempts = [{"taskUUID": SUBMITTED, "outcome": "delivered"}, {"taskUUID": SUBMITTED, "outcome": "delivered"},
                {"taskUUID": SUBMITTED, "outcome": "injected-failure"}]
    return ledger, stored, logged, ids, emulated, attempts


def test_a_clean_run_balances():
    result = balance(*world())
    assert (result["lost"], result["doubled"]) == (0, 0), result["problems"]
    assert result["deliveries_acknowledged"] == 3 and result["tasks_succeeded"] == 1


@pytest.mark.parametrize("spoil, kind", [
    (lambda ledger, s, g, i, e, a: i.discard("2-0"), "lost"),  # an acknowledged external delivery not logged
    (lambda ledger, s, g, i, e, a: g.update({SUBMITTED: -1}), "lost"),  # a webhook the emulator saw acked, not logged
    (lambda ledger, s, g, i, e, a: s.pop(SUBMITTED), "lost"),  # a submitted task gone
    (lambda ledger, s, g, i, e, a: s[SUBMITTED].update(status="submitted"), "lost"),  # never settled
    (lambda ledger, s, g, i, e, a: s[SUBMITTED].update(delivery_count=3), "doubled"),  # a delivery counted twice
    (lambda ledger, s, g, i, e, a: s[EXTERNAL].update(cost="0.004"), "doubled"),  # a cost added up twice
    # logged more often than ever sent
    (lambda ledger, s, g, i, e, a: (g.update({EXTERNAL: 2}), s[EXTERNAL].update(delivery_count=3),
                                    ledger.attempts.update({EXTERNAL: -1})), "doubled"),
])
def test_a_loss_or_a_double_is_found(spoil, kind):
    parts = world()
    spoil(*parts)
    result = balance(*parts)
    assert result[kind] >= 1, result["problems"]
