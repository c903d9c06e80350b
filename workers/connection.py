"""The service's Redis client: one function builds every one (web processes, RQ workers, cron, CLI, launcher).

REDIS_URL names one Redis; REDIS_SENTINELS and REDIS_SENTINEL_MASTER name a primary
that Sentinel fails over to a replica (config.py takes one or the other).
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel
from redis.sentinel import SentinelManagedConnection

from config import REDIS_TIMEOUT_S
from config import Config

CONNECT_TIMEOUT_S = 0.5
"""How long a new connection to Redis may take (a LAN's take a millisecond): a host that is lost answers
nothing, and every try of a command to it costs this much until Sentinel names another primary."""

SENTINEL_TIMEOUT_S = 2.0
"""Socket timeout of the questions to a sentinel (which is the primary?); the next sentinel is asked after it."""


RETRIES = 2
"""Times a command that lost its connection is tried again (a connection to a demoted primary then reaches
the new one at once) before the caller sees the error: not redis-py's default ten, which with a host
that does not answer would hold a webhook far past its sender's timeout."""


def connect(config: Config, timeout: float | None = REDIS_TIMEOUT_S) -> redis.Redis:
    """The client of every Redis user of the service, with short timeouts: an outage is a quick 503, not a hang.

    With REDIS_SENTINELS it is redis-py's Sentinel client of REDIS_SENTINEL_MASTER: each
    new connection asks the sentinels for the primary, and a connection to a primary
    demoted by a failover is dropped on its first READONLY reply, so the next attempt
    reaches the new primary. RQ's worker blocks on the queue for minutes: give it `timeout=None`.
    """
    options = {"socket_timeout": timeout, "socket_connect_timeout": CONNECT_TIMEOUT_S, "health_check_interval": 30,
               "retry": Retry(ExponentialBackoff(cap=0.25, base=0.05), RETRIES)}
    if config.redis_sentinels:
        # Asked once each: the next sentinel is the retry. With redis-py's default retries a sentinel whose
        # host is lost (no answer, not a refusal) held every new connection for tens of seconds.
        asked_once = {"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S,
                      "retry": Retry(NoBackoff(), 0)}
        sentinel = Sentinel(config.redis_sentinels, sentinel_kwargs=asked_once)
        return sentinel.master_for(config.redis_sentinel_master, connection_class=SentinelConnection, **options)
    return redis.Redis.from_url(config.redis_url, **options)


class SentinelConnection(SentinelManagedConnection):
    """redis-py's Sentinel connection, connecting once per try and dropped like any other when a read is
    interrupted.

    redis-py's keeps it (redis/redis-py#4292), and the next command on it reads the
    interrupted one's reply: RQ's warm shutdown interrupts its blocking dequeue so,
    and its last bookkeeping then waited out the socket timeout (minutes).
    """

    def connect(self):
        """One try: the command's own retries (RETRIES) try again, each asking the sentinels anew. redis-py's
        retries here too multiplied them: a command to a primary whose host was lost took 15 s to fail."""
        return self._connect_retry()

    def read_response(self, disable_decoding=False, *, disconnect_on_error=True, **kwargs):
        return super().read_response(disable_decoding, disconnect_on_error=disconnect_on_error, **kwargs)
