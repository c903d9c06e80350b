"""Keep webhook secrets out of everything the emulator shows or logs.

Webhook URLs carry their credentials in the query (`?token=...`, `?apiKey=...`),
so every URL is shown with those values replaced by REDACTED, and error texts
(which often quote the URL) are scrubbed of them too.
"""

from __future__ import annotations

from urllib.parse import parse_qsl
from urllib.parse import quote
from urllib.parse import urlencode
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

REDACTED = "REDACTED"
SECRET_PARAMS = frozenset({
    "token", "apikey", "api_key", "key", "secret", "signature", "sig", "password", "access_token", "auth",
})


def _secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in SECRET_PARAMS and v]
    if parts.password:
        found.append(parts.password)
    return found


def redact_url(url: str) -> str:
    """The URL with the values of secret query parameters (and any password) replaced by REDACTED."""
    try:
        parts = urlsplit(url)
        query = [(k, REDACTED if k.lower() in SECRET_PARAMS and v else v)
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        netloc = parts.netloc
        if parts.password:
            netloc = netloc.replace(":" + parts.password + "@", ":" + REDACTED + "@")
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe=":/"), parts.fragment))
    except ValueError:
        return REDACTED


def redact_text(text: str, url: str) -> str:
    """`text` with the URL's secret values (raw or percent-encoded) replaced by REDACTED."""
    try:
        secrets = _secrets(url)
    except ValueError:
        return REDACTED
    for secret in sorted(secrets, key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            text = text.replace(form, REDACTED)
    return text
