"""Seeded random choices that do not depend on thread timing.

Each draw hashes the seed with a key naming what is being decided (for
example `("drop", taskUUID)` or `("backoff", taskUUID, copy, attempt)`), so
the same seed and the same task UUIDs make the same choices whatever order
threads happen to run in. Per-request choices are keyed by the request's
sequence number.
"""

from __future__ import annotations

import hashlib
import random
import secrets


class Dice:
    def __init__(self, seed: int | None = None) -> None:
        self.seed = secrets.randbits(32) if seed is None else seed

    def unit(self, *key: object) -> float:
        """A number in [0, 1), fixed for this seed and key."""
        digest = hashlib.blake2b(repr((self.seed, key)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def chance(self, rate: float, *key: object) -> bool:
        """True with probability `rate` (never for 0, always for 1)."""
        return rate > 0 and self.unit(*key) < rate

    def rng(self, *key: object) -> random.Random:
        """A private random.Random seeded from this seed and key (e.g. for a shuffle)."""
        return random.Random(int(self.unit(*key) * 2**64))
