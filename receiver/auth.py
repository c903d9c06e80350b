"""Token checks: constant-time, several tokens at once (for rotation), never logged.

The webhook secret comes in any form Runware documents for a `webhookURL`
(`?token=your_auth_token`, `?apiKey=sk_live_abc123`) or in a header
(`Authorization: Bearer …`, `X-API-Key: …`). A request that gives it more than
once, in several forms or by repeating one, must give the same value every
time: values that differ are refused with 401 rather than tried one by one, so
that a URL carrying a wrong or stale secret never passes on the strength of
another form, and the answer does not say which form was right.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps

from flask import current_app
from flask import request

from receiver.errors import error_response

WEBHOOK_SECRET_PARAMETERS = frozenset({"token", "apikey"})
"""Query parameters (by lower-case name) that carry the webhook secret: never a label, never stored or logged."""

WEBHOOK_SECRET_HEADER = "X-API-Key"
"""The header that carries the webhook secret, besides `Authorization: Bearer`."""


def token_matches(given: str | None, tokens: tuple[str, ...]) -> bool:
    """True when `given` equals one of `tokens`; every token is compared, in constant time."""
    if not given:
        return False
    given_bytes = given.encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given_bytes, token.encode())
    return matched


def bearer_token() -> str | None:
    """The token of an `Authorization: Bearer …` header, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def is_webhook_secret_parameter(name: str) -> bool:
    """True for a query parameter carrying the webhook secret (`token`, `apiKey`, in any case)."""
    return name.lower() in WEBHOOK_SECRET_PARAMETERS


def webhook_secrets() -> list[str]:
    """Every webhook secret the request gives, in every form (query parameters, Bearer, X-API-Key)."""
    given = [value for name, value in request.args.items(multi=True) if is_webhook_secret_parameter(name)]
    given += request.headers.getlist(WEBHOOK_SECRET_HEADER)
    bearer = bearer_token()
    if bearer is not None:
        given.append(bearer)
    return given


def webhook_secret_problem(tokens: tuple[str, ...]) -> str | None:
    """Why the request's webhook secret is refused (the 401's message), or None when it matches one of `tokens`."""
    given = set(webhook_secrets())
    if len(given) > 1:
        return "the webhook secret is given more than once with different values"
    if not token_matches(next(iter(given), None), tokens):
        return "missing or invalid token"
    return None


def require_bearer(setting: str) -> Callable:
    """Guard a view with a Bearer token from the service setting named `setting` (e.g. read_tokens)."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def guarded(*args, **kwargs):
            tokens = getattr(current_app.config["SERVICE"], setting)
            if not token_matches(bearer_token(), tokens):
                return error_response(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
            return view(*args, **kwargs)

        return guarded

    return decorate
