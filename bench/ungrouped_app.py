"""The intake with one Redis round trip per request, no group commit: a benchmark line only.

Beside `wsgi:intake` under a threaded worker model it shows what sharing the round
trip pays (bench/intake.py); everything else in the request path is the service's.
"""

from receiver import group_commit
from workers.queues import add_deliveries


class OneRoundTripEach(group_commit.GroupCommit):
    """Each request sends its own entry (and the drain flag), as `workers.queues.queue_delivery` does."""

    def add(self, fields: dict) -> str:
        [reply] = add_deliveries(self.conn, [fields])
        if isinstance(reply, Exception):
            raise reply
        return reply


group_commit.GroupCommit = OneRoundTripEach

import wsgi  # noqa: E402  (the service's app, built with the class above)

app = wsgi.intake
