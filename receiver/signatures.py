"""Standard Webhooks signatures: optional verification for senders that sign their deliveries.

A signed delivery carries three headers (Standard Webhooks 1.0):

- `webhook-id`: the message id, the same on every retry (kept with the delivery as a dedup key);
- `webhook-timestamp`: when it was sent, in Unix seconds;
- `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
  one per secret the sender signs with (several while a secret is rotated).

Svix-based senders name the same headers `svix-id`, `svix-timestamp` and
`svix-signature` (Standard Webhooks grew out of Svix; the values are the same), and
either set is accepted. A delivery that carries both sets must give the same three
values in each: sets that differ are refused (SignatureError), so that a delivery
cannot show the check one id, time or signature and whatever reads the other set another.

Secrets are `whsec_` followed by the base64 of the key bytes (`config.signing_keys` decodes
them). With WEBHOOK_SIGNING_SECRETS set,
the webhook needs a valid signature from one of them, within WEBHOOK_SIGNATURE_TOLERANCE_SECONDS
of now (past or future, against replays). Signatures are compared in constant time.

Written by hand (a few lines of hmac and base64) rather than with the `standardwebhooks`
package: its 1.1.0 raises ValueError or UnicodeDecodeError, i.e. a 500, on a malformed
signature header or a non-UTF-8 body, and its 5-minute tolerance cannot be changed.
The tests check this module against the specification's published test vector.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

MAX_SIGNATURES = 16
"""Signatures of one header looked at; more than a rotation needs is ignored."""

MAX_ID_LENGTH = 256
"""Longest `webhook-id` kept with a delivery."""

HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
"""The specification's header names: id, timestamp, signature."""

SVIX_HEADERS = ("svix-id", "svix-timestamp", "svix-signature")
"""The same three headers as Svix-based senders name them."""


class SignatureError(ValueError):
    """The delivery's signature headers are missing or wrong; the message says which (never a secret)."""


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,…` signature of a delivery (what a sender puts in `webhook-signature`)."""
    signed = b"%s.%d.%s" % (msg_id.encode("latin-1"), timestamp, body)
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def header_values(headers: Mapping[str, str], names: tuple[str, str, str]) -> tuple[str, str, str]:
    """The stripped values of the headers `names` (empty when absent)."""
    return tuple((headers.get(name) or "").strip() for name in names)


def signature_headers(headers: Mapping[str, str]) -> tuple[tuple[str, str, str], tuple[str, str, str]]:
    """The names and values of the signature headers the delivery uses: `svix-*` when given, else `webhook-*`.

    Raises SignatureError when it carries both sets and they differ in any value.
    """
    spec, svix = header_values(headers, HEADERS), header_values(headers, SVIX_HEADERS)
    if any(spec) and any(svix) and spec != svix:
        raise SignatureError("webhook-* and svix-* signature headers are both given and differ")
    return (SVIX_HEADERS, svix) if any(svix) else (HEADERS, spec)


def webhook_id(headers: Mapping[str, str]) -> str | None:
    """The delivery's `webhook-id` (or `svix-id`), if it has a usable one.

    None when both are given and differ: neither is then trusted as the delivery's id.
    """
    spec_id, svix_id = header_values(headers, HEADERS)[0], header_values(headers, SVIX_HEADERS)[0]
    if spec_id and svix_id and spec_id != svix_id:
        return None
    value = spec_id or svix_id
    return value if 0 < len(value) <= MAX_ID_LENGTH else None


def verify(keys: tuple[bytes, ...], headers: Mapping[str, str], body: bytes,
           tolerance: int = 300, now: float | None = None) -> None:
    """Check a delivery's Standard Webhooks signature; raise SignatureError naming what is wrong.

    `headers` is looked up by lower-case name (Werkzeug's headers are case-insensitive),
    in either set of names (`signature_headers`).
    Header values arrive as latin-1 text (WSGI), so `latin-1` gives back the bytes signed.
    """
    names, values = signature_headers(headers)
    missing = [name for name, value in zip(names, values) if not value]
    if missing:
        raise SignatureError(f"missing signature headers: {', '.join(missing)}")
    msg_id, stamp, signatures = values
    id_name, stamp_name, signature_name = names
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        raise SignatureError(f"{stamp_name} must be an integer number of Unix seconds")
    now = time.time() if now is None else now
    if abs(now - int(stamp)) > tolerance:
        raise SignatureError(f"{stamp_name} is more than {tolerance} s away from the receiver's clock")
    try:
        signed = b"%s.%s.%s" % (msg_id.encode("latin-1"), stamp.encode(), body)
    except UnicodeEncodeError:
        raise SignatureError(f"{id_name} holds characters outside latin-1") from None
    expected = [hmac.new(key, signed, hashlib.sha256).digest() for key in keys]
    matched = False
    for candidate in signatures.split()[:MAX_SIGNATURES]:
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        for digest in expected:
            matched |= hmac.compare_digest(digest, given)
    if not matched:
        raise SignatureError(f"no valid v1 signature in {signature_name} for the configured secrets")
