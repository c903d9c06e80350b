"""WSGI entry points, one app per process kind: `wsgi:intake` (webhooks) and `wsgi:app` (the readers).

Each is built on first access (a PEP 562 module `__getattr__`), so a process
builds and imports only the app it serves: `gunicorn ... wsgi:intake` never
loads the query API, the dashboard or Pillow. `flask --app wsgi ...` finds `app`.
"""

from receiver import create_app

APPS = {"intake": "intake", "app": "api"}
"""Module attribute -> the kind of app it names (receiver.KINDS)."""


def __getattr__(name: str):
    if name not in APPS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = globals()[name] = create_app(kind=APPS[name])
    return app
