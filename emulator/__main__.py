"""`python -m emulator`: serve the emulator until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from .server import close_server
from .server import make_emulator_server
from .server import server_url
from .settings import parse_args


def configure_logging() -> None:
    """Plain lines; under LOG_FORMAT=console (`make run`) without the time, which the supervisor stamps, and
    without werkzeug's line per request."""
    if os.environ.get("LOG_FORMAT", "").strip().lower() == "console":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s emulator %(levelname)s %(message)s")


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_args(argv, command_line=True)
    except ValueError as exc:
        print(f"python -m emulator: error: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    try:
        server = make_emulator_server(settings)
    except OSError as exc:
        print(f"python -m emulator: error: {exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()

    def on_signal(signum, frame) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="emulator-http", daemon=True)
    thread.start()
    seed = server.app.extensions["emulator"].dice.seed
    print(f"emulator listening on {server_url(server)} (POST /v1 and WebSocket /v1; seed {seed})", flush=True)
    stopping.wait()
    print("emulator stopping", flush=True)
    server.shutdown()
    thread.join(5)
    close_server(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
