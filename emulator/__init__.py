"""A Runware-compatible emulator for image captions, REST and WebSocket, for local runs and tests.

It speaks Runware's task-array contract (imageCaption, caption, imageUpload,
getResponse) over REST and WebSocket, delivers webhooks with retries, can keep
its records across restarts, and can inject faults. Captions
are measured from the image's pixels: a deterministic stand-in, not a model.
See emulator/README.md.
"""

from .app import create_app
from .server import serve_in_thread
from .settings import Faults
from .settings import Settings

__all__ = ["Faults", "Settings", "create_app", "serve_in_thread"]
