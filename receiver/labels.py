"""Labels: the rules a task's labels follow, wherever they come from.

A label is a key and a value: a query parameter of the webhook URL (every one
but the secret, `token` or `apiKey`), a `"labels"` object of `POST
/api/captions`, a `--label key=value` of the CLI. Keys are 1 to 64 of
`A-Z a-z 0-9 _ . -`, never `token` or `apiKey` (in any case); values 1 to 256
printable characters; at most 16 labels, and no key twice. A label that breaks
a rule raises `LabelError`, which names it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from receiver.auth import is_webhook_secret_parameter

KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""A label's key."""

MAX_VALUE_CHARS = 256
"""Longest label value."""

MAX_LABELS = 16
"""Most labels one webhook URL or submission may carry."""


class LabelError(ValueError):
    """A label breaks a rule; `label` names it (its key, as given), the message says which rule."""

    def __init__(self, label: str, message: str):
        super().__init__(f"label {label!r}: {message}")
        self.label = label


def checked(pairs: Iterable[tuple[object, object]]) -> dict[str, str]:
    """The labels of (key, value) pairs, each checked; LabelError for the first that breaks a rule."""
    labels: dict[str, str] = {}
    for key, value in pairs:
        name = key if isinstance(key, str) else repr(key)
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise LabelError(name[:80], "a key is 1 to 64 letters, digits, '_', '.' or '-'")
        if is_webhook_secret_parameter(key):
            raise LabelError(key, "names the webhook secret, which is never a label")
        if key in labels:
            raise LabelError(key, "given more than once")
        if not isinstance(value, str):
            raise LabelError(key, "the value must be a string")
        if not value:
            raise LabelError(key, "the value is empty")
        if len(value) > MAX_VALUE_CHARS:
            raise LabelError(key, f"the value is longer than {MAX_VALUE_CHARS} characters")
        if not value.isprintable():
            raise LabelError(key, "the value holds a character that is not printable")
        labels[key] = value
        if len(labels) > MAX_LABELS:
            raise LabelError(key, f"more than {MAX_LABELS} labels")
    return labels


def from_query(args) -> dict[str, str]:
    """The labels of a webhook URL: every query parameter but the secret's, in the order given."""
    return checked((name, value) for name, value in args.items(multi=True) if not is_webhook_secret_parameter(name))


def from_object(value: object) -> dict[str, str]:
    """The labels of a JSON object (a submission's `"labels"`)."""
    if not isinstance(value, dict):
        raise LabelError("labels", 'must be an object such as {"projectId": "proj_789"}')
    return checked(value.items())


def from_assignment(text: str) -> tuple[str, str]:
    """One `key=value` of the command line, split (checked with the others by `checked`)."""
    key, equals, value = text.partition("=")
    if not equals:
        raise LabelError(key[:80], "write it as key=value")
    return key, value
