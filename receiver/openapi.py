"""The API's OpenAPI 3.1 document, `GET /api/openapi.json`, and its reference page, `GET /api/docs`.

Each route says what it takes and answers with `@operation(...)`, which only
marks the view (it changes nothing of how it runs); the shapes are pydantic
models in receiver/schemas.py, named by their class. apispec assembles the
document from the routes of both apps (apispec-webframeworks' Flask plugin turns
each rule into a path), the models' JSON Schema becomes its components. One
document describes both: the readers' routes, and the intake's webhook under
its own path (`/webhooks/`, which the front sends to the intake's gunicorn).

The readers build the document on its first request, not at start-up: only
then do they import apispec, pydantic and the intake's view module (to read its
routes; nothing of it is mounted). The document and the page need no token: they
hold no data. The page is Swagger UI, vendored from npm (`make vendor-api-docs`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from http import HTTPStatus

from flask import Blueprint
from flask import Flask
from flask import jsonify
from flask import render_template

bp = Blueprint("openapi", __name__, static_folder="static/api-docs", static_url_path="/api/docs/static")

TITLE = "Caption webhook receiver"
VERSION = "1"

SECURITY_SCHEMES = {
    "readToken": {"type": "http", "scheme": "bearer", "description": "a token of READ_TOKENS"},
    "submitToken": {"type": "http", "scheme": "bearer", "description": "a token of SUBMIT_TOKENS"},
    "adminToken": {"type": "http", "scheme": "bearer", "description": "a token of ADMIN_TOKENS"},
    "metricsToken": {"type": "http", "scheme": "bearer", "description": "a token of METRICS_TOKENS"},
    "webhookToken": {"type": "apiKey", "in": "query", "name": "token",
                     "description": "a token of WEBHOOK_TOKENS, as Runware's webhookURL carries it"},
    "webhookApiKey": {"type": "apiKey", "in": "query", "name": "apiKey", "description": "the same, as ?apiKey="},
    "webhookBearer": {"type": "http", "scheme": "bearer", "description": "the same, as Authorization: Bearer"},
    "webhookHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "the same, as X-API-Key"},
}
"""How each kind of caller proves who it is. Several forms of the webhook secret must agree (receiver/auth.py)."""

AUTH = {"read": ["readToken"], "submit": ["submitToken"], "admin": ["adminToken"], "metrics": ["metricsToken"],
        "webhook": ["webhookToken", "webhookApiKey", "webhookBearer", "webhookHeader"]}
"""`@operation(auth=...)` names -> the security schemes, any one of which will do."""

ERRORS = {
    400: "a query parameter or the body is malformed: the message names it",
    401: "the token is missing or wrong",
    404: "no such thing",
    413: "the body is over the limit",
    415: "the body's Content-Type is not one this route takes",
    422: "the body is well-formed but holds nothing usable: the message names the field",
    503: "unavailable for now (the database, Redis, or a bound on readers): retry after Retry-After",
}
"""Error statuses a route may list in `errors`, with what each means."""

def operation(*, summary: str, tags: list[str], responses: dict, errors: tuple[int, ...] = (),
              auth: tuple[str, ...] = (), query: str | None = None, body: dict | None = None,
              path: dict | None = None, description: str | None = None) -> Callable:
    """Mark a view with its OpenAPI operation; the view itself is returned unchanged.

    `responses` maps a status to a model of receiver/schemas.py (JSON) or to `{media type: model or None}`;
    `errors` lists the error statuses it answers (with receiver/errors.py's body); `auth` names the kinds of
    token (AUTH) any of which it takes; `query` names a model whose fields are its query parameters; `body`
    maps media types to models; `path` gives the path parameters' schemas.
    """
    spec = {"summary": summary, "tags": tags, "responses": responses, "errors": errors, "auth": auth,
            "query": query, "body": body, "path": path or {}, "description": description}

    def mark(view: Callable) -> Callable:
        view.openapi = spec
        return view

    return mark


STATIC = operation(summary="A static file", tags=["pages"], path={"filename": {"type": "string"}},
                   responses={200: {"*/*": None}}, errors=(404,))(lambda: None).openapi
"""What the apps' and blueprints' static routes serve."""


@bp.get("/api/openapi.json")
@operation(summary="This document", tags=["reference"], responses={200: {"application/json": None}})
def openapi_json():
    return jsonify(document())


@bp.get("/api/docs")
@operation(summary="The API reference page (Swagger UI)", tags=["reference"], responses={200: {"text/html": None}})
def reference_page():
    return render_template("api-docs/index.html"), 200, {"Cache-Control": "no-cache"}


@bp.after_request
def security_headers(response):
    """The page runs only this origin's scripts; Swagger UI sets inline styles."""
    response.headers["Content-Security-Policy"] = ("default-src 'self'; script-src 'self'; style-src 'self' "
                                                   "'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
                                                   "base-uri 'none'; frame-ancestors 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def apps() -> list[Flask]:
    """Bare apps with the routes of each kind mounted: what the document describes (nothing is served by them)."""
    from receiver import register_intake
    from receiver import register_readers

    built = []
    for register in (register_readers, register_intake):
        app = Flask("receiver")
        register(app)
        built.append(app)
    return built


@functools.cache
def document() -> dict:
    """The OpenAPI document of both apps' routes."""
    from apispec import APISpec
    from apispec_webframeworks.flask import FlaskPlugin

    spec = APISpec(TITLE, VERSION, "3.1.0", plugins=[FlaskPlugin()],
                   info={"description": "Runware caption results: webhook intake, submission, query API, exports, "
                                        "dead letters, health and metrics."})
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    models = Models()
    seen = set()
    for app in apps():
        for rule in app.url_map.iter_rules():
            view = app.view_functions[rule.endpoint]
            meta = STATIC if rule.endpoint.split(".")[-1] == "static" else getattr(view, "openapi", None)
            if meta is None:
                raise LookupError(f"route {rule.rule} ({rule.endpoint}) has no @operation")
            methods = sorted(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
            if (rule.rule, tuple(methods)) in seen:  # the health checks: mounted in both apps
                continue
            seen.add((rule.rule, tuple(methods)))
            operations = {method: models.operation(meta, rule.endpoint) for method in methods}
            spec.path(view=view, app=app, operations=operations, parameters=path_parameters(rule, meta))
    for name, schema in models.components().items():
        spec.components.schema(name, schema)
    return spec.to_dict()


def path_parameters(rule, meta: dict) -> list[dict]:
    """The rule's path parameters: a werkzeug `any(...)` as an enum, others as the operation gives them."""
    parameters = []
    for name in rule.arguments:
        converter = rule._converters[name]
        schema = meta["path"].get(name) or {"type": "string"}
        if hasattr(converter, "items"):
            schema = {"type": "string", "enum": list(converter.items)}
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return parameters


class Models:
    """The models of receiver/schemas.py an operation names, as references to components."""

    def __init__(self):
        from receiver import schemas

        self.schemas = schemas
        self.used: dict[str, type] = {}

    def ref(self, name: str | None) -> dict:
        if name is None:
            return {}
        self.used[name] = getattr(self.schemas, name)
        return {"$ref": f"#/components/schemas/{name}"}

    def content(self, value) -> dict:
        media = value if isinstance(value, dict) else {"application/json": value}
        return {kind: {"schema": self.ref(model)} for kind, model in media.items()}

    def operation(self, meta: dict, endpoint: str) -> dict:
        op = {"operationId": endpoint.replace(".", "_"), "summary": meta["summary"], "tags": meta["tags"],
              "security": [{name: []} for kind in meta["auth"] for name in AUTH[kind]],
              "responses": {str(status): {"description": HTTPStatus(status).phrase, "content": self.content(v)}
                            for status, v in meta["responses"].items()}}
        errors = set(meta["errors"]) | ({401} if meta["auth"] else set())
        for status in sorted(errors):
            response = {"description": ERRORS[status], "content": self.content("Error")}
            if status == 503:
                response["headers"] = {"Retry-After": {"required": True, "description": "seconds",
                                                       "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
            op["responses"].setdefault(str(status), response)
        if meta["description"]:
            op["description"] = meta["description"]
        if meta["query"]:
            op["parameters"] = self.query_parameters(getattr(self.schemas, meta["query"]))
        if meta["body"]:
            op["requestBody"] = {"required": True, "content": self.content(meta["body"])}
        return op

    @staticmethod
    def query_parameters(model) -> list[dict]:
        """Each field of `model` as an optional query parameter (a null alternative dropped: absent is null)."""
        schema = model.model_json_schema()
        parameters = []
        for name, prop in schema.get("properties", {}).items():
            prop = dict(prop)
            alternatives = [p for p in prop.pop("anyOf", []) if p.get("type") != "null"]
            if alternatives:
                prop.update(alternatives[0])
            prop.pop("default", None)
            parameters.append({"name": name, "in": "query", "required": False,
                               "description": prop.pop("description", ""), "schema": prop})
        return parameters

    def components(self) -> dict[str, dict]:
        """The JSON Schemas of the models named, and of the models they hold."""
        from pydantic.json_schema import models_json_schema

        _, top = models_json_schema([(model, "validation") for model in self.used.values()],
                                    ref_template="#/components/schemas/{model}")
        return top.get("$defs", {})
