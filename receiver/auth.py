"""Token checks: constant-time, several tokens at once (for rotation), never logged."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps

from flask import current_app
from flask import request

from receiver.errors import error_response


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
