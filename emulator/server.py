"""Serving the emulator with werkzeug's threaded server, in the foreground or in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import make_server

from .app import create_app
from .settings import Settings


def make_emulator_server(settings: Settings) -> BaseWSGIServer:
    """A threaded werkzeug server for the emulator, bound (port 0: any free port) but not yet serving."""
    app = create_app(settings)
    try:
        server = make_server(settings.host, settings.port, app, threaded=True)
    except SystemExit:  # werkzeug exits when the port is taken; callers get an OSError instead
        app.extensions["emulator"].close()
        raise OSError(f"cannot listen on {settings.host}:{settings.port}: the address is in use") from None
    except BaseException:
        app.extensions["emulator"].close()
        raise
    server.daemon_threads = True
    return server


def server_url(server: BaseWSGIServer) -> str:
    host = server.host if server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.port}"


def close_server(server: BaseWSGIServer) -> None:
    """Close the listening socket and stop the emulator's background threads."""
    server.server_close()
    server.app.extensions["emulator"].close()


def serve_in_thread(settings: Settings | None = None) -> tuple[str, Callable[[], None]]:
    """Start the emulator in a background thread; return its base URL and a `stop()` function.

    Without settings it listens on 127.0.0.1 on a free port. Clients post tasks to
    `url + "/v1"`. `stop()` shuts the server down and may be called more than once.
    """
    settings = settings or Settings(port=0)
    server = make_emulator_server(settings)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="emulator-http", daemon=True)
    thread.start()
    lock = threading.Lock()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        with lock:
            if stopped:
                return
            stopped = True
        server.shutdown()
        thread.join(5)
        close_server(server)

    return server_url(server), stop
