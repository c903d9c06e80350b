"""Generators of hostile requests for tests/test_fuzz.py, and the checks every answer must pass.

`HostileRequests` draws requests from a seeded `random.Random`, so a run is
repeatable from its seed: webhook bodies (valid, partly valid, wrong types, huge
numbers, NaN and Infinity, deep nesting, enormous arrays, invalid UTF-8,
duplicate keys, missing and extra fields, truncated and bit-flipped, raw bytes),
wrong content types, oversize bodies, bad tokens; and requests to every other
route of the app (path values, query strings, methods and tokens of every kind).
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from dataclasses import field

WEBHOOK = "/webhooks/runware"
UUID_IN_TEXT = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
CONTENT_TYPES = ["text/plain", "", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/jsonx", "application/xml", "application/octet-stream", "json", "text/json"]
JSON_TYPES = ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/json;x=1"]
QUERY_NAMES = ["status", "source", "since", "until", "q", "limit", "cursor", "token", "page", "x"]
HOSTILE_STRINGS = ["", " ", "0", "-1", "1e999", "NaN", "null", "true", "[]", "{}", "' OR 1=1 --", "%00", "\x00",
                   "a" * 5000, "2026-13-45T99:99:99Z", "2026-01-01T00:00:00+99:00", "..%2f..%2fetc%2fpasswd",
                   "\u202e\ufeff", "😀" * 50, "9" * 400, "SELECT", "<script>", "\\u0000", "success,error,queued"]


def is_uuid_literal(text: bytes) -> set[str]:
    """The UUIDs written anywhere in a body, lower-cased."""
    return {m.decode().lower() for m in UUID_IN_TEXT.findall(text)}


def header_safe(value: str) -> str:
    """A header value an HTTP client can send (no line breaks)."""
    return re.sub(r"[\r\n]", " ", value)


@dataclass
class Request:
    kind: str
    method: str
    path: str
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    query: list[tuple[str, str]] = field(default_factory=list)

    @property
    def is_webhook(self) -> bool:
        return self.method == "POST" and self.path == WEBHOOK


class HostileRequests:
    """Seeded generator of hostile requests; `tokens` maps a setting name to its valid tokens."""

    def __init__(self, seed: int, tokens: dict[str, list[str]], max_body: int, routes: list[tuple[str, set[str]]]):
        self.rng = random.Random(seed)
        self.tokens = tokens
        self.max_body = max_body
        self.routes = routes
        weights = {
            "valid": 14, "partial": 6, "wrong_types": 8, "huge_numbers": 5, "nan_infinity": 4, "deep_nesting": 3,
            "enormous_array": 2, "invalid_utf8": 5, "duplicate_keys": 4, "missing_fields": 5, "extra_fields": 4,
            "truncated": 4, "byte_flip": 5, "random_bytes": 3, "wrong_content_type": 4, "oversize": 1,
            "bad_token": 4, "api": 15,
        }
        self.kinds = list(weights)
        self.weights = list(weights.values())

    # -- building blocks ---------------------------------------------------------------------
    def uuid(self) -> str:
        value = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        return value.upper() if self.rng.random() < 0.1 else value

    def text(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(["a red square", "a dog on a beach", "", "x" * 300, "caption\nwith\tcontrol"])
        if r < 0.8:
            return self.rng.choice(HOSTILE_STRINGS)
        return "".join(chr(self.rng.choice([self.rng.randrange(32, 127), self.rng.randrange(0x80, 0x10FFFF)]))
                       for _ in range(self.rng.randrange(1, 40))).encode("utf-8", "replace").decode("utf-8", "replace")

    def cost(self) -> object:
        return self.rng.choice([0.0019, 0, 1, 0.5, None, 1e-9, 999999.99])

    def item(self) -> dict:
        r = self.rng.random()
        base = {"taskType": self.rng.choice(["imageCaption", "caption"]), "taskUUID": self.uuid()}
        if r < 0.7:
            base.update(text=self.text(), cost=self.cost())
        elif r < 0.85:
            base.update(status="error", code=self.rng.choice(["timeoutProvider", "invalidInput"]), message=self.text())
        else:
            base.update(status=self.rng.choice(["processing", "pending"]))
        return base

    def envelope(self, items: list, errors: list | None = None) -> object:
        shape = self.rng.randrange(4)
        if shape == 0 and len(items) == 1:
            return items[0]
        doc: dict = {"data": items}
        if errors:
            doc["errors"] = errors
        if shape == 1:
            doc["requestUUID"] = self.uuid()
        return doc

    def valid_doc(self) -> object:
        items = [self.item() for _ in range(self.rng.choice([1, 1, 1, 2, 5]))]
        errors = None
        if self.rng.random() < 0.2:
            errors = [{"taskUUID": self.uuid(), "code": "invalidInput", "message": "bad"}]
        return self.envelope(items, errors)

    def dumps(self, doc: object) -> bytes:
        return json.dumps(doc, ensure_ascii=self.rng.random() < 0.5).encode("utf-8", "surrogatepass")

    def wrong_value(self) -> object:
        return self.rng.choice([1, -1, 2.5, True, False, None, [], {}, [1, 2], {"a": 1}, "", "x", 10**30, -(10**30)])

    # -- webhook bodies, by kind -------------------------------------------------------------
    def body(self, kind: str) -> bytes:
        rng = self.rng
        if kind == "valid":
            return self.dumps(self.valid_doc())
        if kind == "partial":
            items = [self.item(), {"taskUUID": rng.choice(["nope", "", 42, None])}, {"text": "no uuid"}]
            rng.shuffle(items)
            return self.dumps({"data": items})
        if kind == "wrong_types":
            item = self.item()
            name = rng.choice(["taskUUID", "text", "cost", "taskType", "model", "status", "error", "code", "message"])
            item[name] = self.wrong_value()
            doc = rng.choice([{"data": [item]}, item, {"data": item}, {"errors": item}, {"data": self.wrong_value()},
                              {"errors": self.wrong_value()}, [item], self.wrong_value()])
            return self.dumps(doc)
        if kind == "huge_numbers":
            number = rng.choice(["1e400", "-1e400", "1e-400", str(2**64), str(-(2**63) - 1), "9" * 5000,
                                 "1" + "0" * 400, "1.7976931348623157e308", "4.9e-324", "-0", "1E+2",
                                 "0.0000000000000000000001"])
            field_name = rng.choice(["cost", "taskUUID", "text", "status"])
            return (b'{"data":[{"taskUUID":"%s","text":"t","%s":%s}]}' % (self.uuid().encode(), field_name.encode(),
                                                                          number.encode()))
        if kind == "nan_infinity":
            literal = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf", b"+1", b".5", b"01", b"0x10"])
            return b'{"data":[{"taskUUID":"%s","text":"t","cost":%s}]}' % (self.uuid().encode(), literal)
        if kind == "deep_nesting":
            depth = rng.choice([100, 1000, 1025, 5000, 100_000])
            opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'{"data":[', b"]}")])
            return opener * depth + b"1" + closer * depth
        if kind == "enormous_array":
            # Up to the body limit: junk elements, items of distinct tasks, or one task repeated
            # (kept short: the store writes a repeated task once per repetition, see the report).
            shape = rng.randrange(4)
            if shape == 0:
                item = b'{"taskUUID":"%s","text":"t"}'
                elements = [item % self.uuid().encode() for _ in range(self.max_body // (len(item) + 40))]
            elif shape == 1:
                elements = [b'{"taskUUID":"%s","text":"t"}' % self.uuid().encode()] * rng.choice([10, 500])
            else:
                element = rng.choice([b"0", b"{}", b"null", b"[]", b'"x"'])
                elements = [element] * rng.choice([1000, 50_000, (self.max_body - 20) // (len(element) + 1)])
            return b'{"data":[' + b",".join(elements) + b"]}"
        if kind == "invalid_utf8":
            body = bytearray(self.dumps(self.valid_doc()))
            for _ in range(rng.randrange(1, 4)):
                body.insert(rng.randrange(len(body)), rng.choice([0xFF, 0xFE, 0xC0, 0x80, 0xED, 0xF5]))
            return bytes(body)
        if kind == "duplicate_keys":
            first, second = self.uuid(), rng.choice([self.uuid(), "not-a-uuid", "1"])
            return rng.choice([
                b'{"data":[{"taskUUID":"%s","taskUUID":"%s","text":"a","text":1}]}' % (first.encode(), second.encode()),
                b'{"data":[{"taskUUID":"%s","taskUUID":"%s","text":1,"text":"a"}]}' % (second.encode(), first.encode()),
                b'{"data":[{"taskUUID":"%s","text":"a"}],"data":"x"}' % first.encode(),
                b'{"data":"x","data":[{"taskUUID":"%s","text":"a","cost":1,"cost":-5}]}' % first.encode(),
            ])
        if kind == "missing_fields":
            item = self.item()
            for name in rng.sample(list(item), rng.randrange(1, len(item) + 1)):
                del item[name]
            return self.dumps(rng.choice([{"data": [item]}, item, {}, {"data": [{}]}, {"errors": [{}]}]))
        if kind == "extra_fields":
            item = self.item()
            for n in range(rng.randrange(1, 50)):
                item[f"extra{n}" if rng.random() < 0.8 else self.text()] = self.wrong_value()
            return self.dumps({"data": [item], "extra": {"nested": [self.wrong_value()]}})
        if kind == "truncated":
            body = self.dumps(self.valid_doc())
            return body[: rng.randrange(len(body))]
        if kind == "byte_flip":
            body = bytearray(self.dumps(self.valid_doc()))
            for _ in range(rng.randrange(1, 6)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            return bytes(body)
        if kind == "random_bytes":
            return rng.randbytes(rng.choice([0, 1, 10, 1000, 20_000]))
        if kind == "oversize":
            size = self.max_body + rng.choice([1, 10, 100_000, self.max_body])
            prefix = b'{"data":[{"taskUUID":"%s","text":"' % self.uuid().encode()
            return prefix + b"x" * (size - len(prefix) - 4) + b'"}]}'
        return self.dumps(self.valid_doc())

    # -- requests ----------------------------------------------------------------------------
    def token(self, setting: str, good: float = 0.85) -> str | None:
        if self.rng.random() < good:
            return self.rng.choice(self.tokens[setting])
        others = [t for name, ts in self.tokens.items() if name != setting for t in ts]
        return self.rng.choice([None, "", "wrong", self.rng.choice(self.tokens[setting]) + "x", "a" * 3000,
                                self.rng.choice(others)])

    def webhook(self, kind: str) -> Request:
        token = self.token("WEBHOOK_TOKENS", good=0.0 if kind == "bad_token" else 1.0)
        body = self.body("valid" if kind in ("bad_token", "wrong_content_type") else kind)
        content_type = self.rng.choice(CONTENT_TYPES if kind == "wrong_content_type" else JSON_TYPES)
        query = [] if token is None else [("token", token)]
        if self.rng.random() < 0.05:
            query.append((self.rng.choice(["token", "x"]), self.text()))
        headers = {}
        if self.rng.random() < 0.1:
            headers["webhook-id"] = header_safe(self.rng.choice(["msg_1", "", "x" * 1000, self.text()]))
        return Request(kind, "POST", WEBHOOK, body, content_type, headers, query)

    def api(self) -> Request:
        rng = self.rng
        rule, methods = rng.choice(self.routes)
        method = rng.choice(sorted(methods)) if rng.random() < 0.9 else rng.choice(["GET", "POST", "PUT", "DELETE",
                                                                                         "PATCH"])
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: rng.choice([self.uuid(), self.text(), "x", "..", "%2e%2e"]), rule)
        path = "/" + path.lstrip("/")
        setting = rng.choice(list(self.tokens))
        token = self.token(setting, good=0.6)
        headers = {}
        if token is not None:
            headers["Authorization"] = header_safe(rng.choice(["Bearer ", "bearer ", "Basic ", ""]) + token)
        query = [(rng.choice(QUERY_NAMES), rng.choice(HOSTILE_STRINGS + [self.uuid(), "10", "success"]))
                 for _ in range(rng.randrange(4))]
        body, content_type = b"", None
        if method != "GET":
            content_type = rng.choice(JSON_TYPES + CONTENT_TYPES)
            body = rng.choice([b"", b"{", b"null", self.dumps({"images": [self.text(), self.wrong_value()]}),
                               self.dumps({"images": ["data:image/png;base64,AAAA"], "includeCost": "yes"}),
                               self.dumps({"ids": [self.wrong_value()]}), self.body(rng.choice(self.kinds[:-1]))])
        return Request("api", method, path, body, content_type, headers, query)

    def next(self) -> Request:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        return self.api() if kind == "api" else self.webhook(kind)


@dataclass
class Tally:
    """What a run sent and got back, and every answer that broke a rule."""

    sent: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    accepted: int = 0
    track_accepted: bool = True
    """Keep the UUIDs of accepted bodies (the strict check); a long run keeps those of rejected bodies only."""
    accepted_uuids: set[str] = field(default_factory=set)
    rejected_uuids: set[str] = field(default_factory=set)

    def record(self, request: Request, status: int, body: bytes, content_type: str | None) -> None:
        self.sent[request.kind] += 1
        self.outcomes[(request.kind, status)] += 1
        if status >= 500:
            self.problem(request, f"answered {status}: {body[:300]!r}")
        elif status >= 400 and request.method != "HEAD":
            try:
                message = json.loads(body)["error"]["message"]
                assert isinstance(message, str) and message
            except Exception:  # noqa: BLE001  (any shape but a JSON error is the finding)
                self.problem(request, f"answered {status} without a JSON error ({content_type}): {body[:200]!r}")
        if request.is_webhook and 200 <= status < 300:
            self.accepted += 1
            if self.track_accepted:
                self.accepted_uuids |= is_uuid_literal(request.body)
        elif request.is_webhook:
            self.rejected_uuids |= is_uuid_literal(request.body)

    def problem(self, request: Request, what: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(f"{request.kind} {request.method} {request.path[:80]} "
                                 f"({request.content_type}, {len(request.body)} bytes: {request.body[:120]!r}): {what}")

    def report(self, seconds: float) -> str:
        total = sum(self.sent.values())
        lines = [f"fuzz: {total} requests in {seconds:.1f}s ({total / max(seconds, 1e-9):.0f}/s), "
                 f"{self.accepted} webhook deliveries accepted, {len(self.problems)} problems"]
        statuses = Counter()
        for (_, status), count in self.outcomes.items():
            statuses[status] += count
        lines.append("  by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
        for kind, count in sorted(self.sent.items(), key=lambda kv: -kv[1]):
            by_status = ", ".join(f"{s}: {n}" for (k, s), n in sorted(self.outcomes.items()) if k == kind)
            lines.append(f"  {kind:<20} {count:>7}   {by_status}")
        return "\n".join(lines)
