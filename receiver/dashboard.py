"""The built-in dashboard: `GET /dashboard`, an HTML shell whose script polls the read API.

View/data split, as in rq-dashboard: the page itself holds no data and needs no
token; its script (ES modules under `static/dashboard/`, `main.js` first) fetches
`/api/stats`, `/api/stats/series`, `/api/tasks` and the rest every few seconds and
draws them, charts with uPlot (vendored under `static/vendor/uplot/`).

Authentication is the read token (READ_TOKENS), asked for once by a sign-in form.
The script keeps it in the tab's `sessionStorage` (gone when the tab closes) and
sends it only as an `Authorization: Bearer` header, so it never appears in a URL,
a cookie, a referrer or an access log. The server side has nothing to configure:
no session, no cookie, no secret key.

Caption text is untrusted (anyone who can reach the webhook writes it). The
script builds the page with `textContent` only, and the page is served with a
Content-Security-Policy that allows scripts and styles from this origin alone
(no inline script, no `eval`) and Trusted Types enforcement, so a string can not
become markup even by mistake.
"""

from __future__ import annotations

from flask import Blueprint
from flask import render_template

from receiver.openapi import operation

bp = Blueprint(
    "dashboard",
    __name__,
    static_folder="static/dashboard",
    static_url_path="/dashboard/static",
)
vendor = Blueprint("vendor", __name__, static_folder="static/vendor", static_url_path="/dashboard/vendor")
"""Libraries vendored from npm, licences kept (uPlot: `make vendor-uplot`); the page's headers apply."""
bp.register_blueprint(vendor)

POLL_INTERVAL_MS = 3000
"""How often the page refreshes its figures (milliseconds)."""

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "require-trusted-types-for 'script'",
    "trusted-types 'none'",
))
"""Only this origin's own files; no inline code; no HTML from strings (Trusted Types)."""


@bp.after_request
def security_headers(response):
    """Headers for the page and its static files."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/dashboard")
@operation(summary="The dashboard page (it signs in with a read token)", tags=["pages"],
           responses={200: {"text/html": None}})
def index():
    """The page shell; the figures arrive from the JSON API."""
    html = render_template("dashboard/index.html", poll_ms=POLL_INTERVAL_MS)
    return html, 200, {"Cache-Control": "no-cache"}
