"""The intake baseline: a bare Flask app that answers 200 with an empty body.

Served exactly like the service, by `deploy/gunicorn.conf.py` (same workers,
worker class and threads, logging and limits), with the intake's settings:
`APP_KIND=intake gunicorn -c deploy/gunicorn.conf.py bench.bare_app:app`.
It has the service's two routes, so the same wrk script hits the same path;
it neither reads the body nor touches Redis.
"""

from flask import Flask

app = Flask(__name__)


@app.post("/webhooks/runware")
def receive():
    return ""


@app.get("/healthz")
def healthz():
    return ""
