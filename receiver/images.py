"""Checking images before they are sent for captioning, and turning them into what Runware takes.

An image given as bytes (an uploaded file, a data URI, raw base64, a local file)
must be PNG, JPG or WEBP, told by Pillow from its content, never from a file
name or a declared media type, and at most `max_bytes` long once decoded. It is
sent as a data URI carrying the media type that was detected. An http(s) URL
and the UUID of an image uploaded to Runware before are passed on as they are:
their bytes are not here to check, and Runware reports a bad one as that task's
error. Every problem is an `ImageError` whose message names it.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from workers.payloads import UUID_RE

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
"""Formats Runware captions, by Pillow's name, with the media type sent for each."""

MAX_URL_LENGTH = 2048
DATA_URI_RE = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,", re.IGNORECASE)


class ImageError(ValueError):
    """An image that cannot be sent; the message says why."""


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def check_bytes(data: bytes, max_bytes: int) -> str:
    """The image's format (a key of FORMATS); ImageError when it is not one or is too large or corrupt."""
    if not data:
        raise ImageError("empty: no bytes")
    if len(data) > max_bytes:
        raise ImageError(f"too large: {_size(len(data))}, the limit is {_size(max_bytes)}")
    kind = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format
                if kind not in FORMATS:
                    raise ImageError(f"unsupported format {kind}: use PNG, JPG or WEBP")
                image.verify()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("too many pixels: refused as a possible decompression bomb") from None
    except Exception as exc:  # Pillow raises several types (SyntaxError, OSError, …) for corrupt data
        if kind is None:  # Image.open failed: UnidentifiedImageError, or a plugin's error on a bad header
            raise ImageError("not an image: the content is not a readable PNG, JPG or WEBP") from None
        raise ImageError(f"corrupt {kind} image: {type(exc).__name__}: {exc}") from None
    return kind


def data_uri(data: bytes, kind: str) -> str:
    """`data:<media type>;base64,…` for checked bytes."""
    return f"data:{FORMATS[kind]};base64,{base64.b64encode(data).decode('ascii')}"


def from_bytes(data: bytes, max_bytes: int) -> str:
    """Check image bytes and return them as a data URI."""
    return data_uri(data, check_bytes(data, max_bytes))


def _b64decode(text: str, max_bytes: int) -> bytes:
    text = "".join(text.split())
    if len(text) * 3 // 4 > max_bytes + 2:
        raise ImageError(f"too large: about {_size(len(text) * 3 // 4)}, the limit is {_size(max_bytes)}")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("not valid base64") from None


def is_url(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://"))


def from_reference(value: object, max_bytes: int) -> str:
    """What to send for one item of a JSON `images` array: URL, image UUID, data URI or raw base64.

    Bytes are checked and returned as a data URI; a URL or UUID is returned as given.
    """
    if not isinstance(value, str) or not value.strip():
        raise ImageError("must be a non-empty string: a URL, a data URI, base64 or an image UUID")
    value = value.strip()
    if is_url(value):
        parts = urlsplit(value)
        if not parts.hostname or len(value) > MAX_URL_LENGTH or any(c.isspace() for c in value):
            raise ImageError(f"not a valid http(s) URL (at most {MAX_URL_LENGTH} characters, with a host)")
        return value
    if UUID_RE.match(value):
        return value.lower()
    match = DATA_URI_RE.match(value)
    if match:
        return from_bytes(_b64decode(value[match.end():], max_bytes), max_bytes)
    if value[:5].lower() == "data:":
        raise ImageError("not a valid data URI: expected data:<media type>;base64,<data>")
    try:
        data = _b64decode(value, max_bytes)
    except ImageError as exc:
        if str(exc) == "not valid base64":
            raise ImageError("neither an http(s) URL, a data URI, an image UUID nor valid base64") from None
        raise
    return from_bytes(data, max_bytes)


def from_path(path: Path, max_bytes: int) -> str:
    """Read, check and encode a local image file."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"too large: {_size(size)}, the limit is {_size(max_bytes)}")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read the file: {exc.strerror or exc}") from None
    return from_bytes(data, max_bytes)


def from_stream(stream, max_bytes: int) -> str:
    """Read (at most `max_bytes` + 1 bytes), check and encode an uploaded file."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageError(f"too large: over {_size(max_bytes)}, the limit")
    return from_bytes(data, max_bytes)
