"""Turn an image reference from a task into decoded pixels, or a clear error.

A reference is one of (tried in this order):
- the UUID of an image uploaded before (`imageUpload`);
- a data URI, `data:<mediaType>;base64,<data>` (the media type is not trusted);
- an http(s) URL, fetched with a timeout and a size limit;
- raw base64 with no prefix.

The format is told from the bytes themselves, never from a name or media type.
Captions accept PNG, JPG and WEBP; uploads also accept BMP and GIF, as
Runware's upload page says.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import requests
from PIL import Image

from .errors import ApiError
from .errors import invalid
from .settings import Settings

CAPTION_FORMATS = ("PNG", "JPEG", "WEBP")
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
DATA_URI_RE = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,(.*)$", re.DOTALL)
USER_AGENT = "runware-emulator"
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp"}


@dataclass(frozen=True)
class DecodedImage:
    """An accepted image: its bytes, what they are, and the decoded pixels."""

    data: bytes
    format: str
    width: int
    height: int
    source: str  # upload | dataURI | url | base64
    pixels: Image.Image

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]

    def summary(self) -> dict:
        """What the records keep about the image (not its bytes)."""
        return {"source": self.source, "format": self.format, "width": self.width, "height": self.height,
                "bytes": len(self.data), "sha256": self.sha256}


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and bool(UUID_RE.match(value))


def sniff(data: bytes) -> str | None:
    """The image format named by the first bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in MAGIC:
        if data.startswith(magic):
            return name
    return None


def _b64decode(text: str, parameter: str, limit: int) -> bytes:
    text = "".join(text.split())
    if len(text) > limit * 4 // 3 + 4:
        raise ApiError("imageTooLarge", f"The image is larger than {limit} bytes.", parameter=parameter)
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("invalidInputImage", "The image is neither a UUID, a data URI, a URL nor valid base64.",
                      parameter) from None


def _fetch(url: str, parameter: str, settings: Settings) -> bytes:
    limit = settings.max_image_bytes
    try:
        with requests.get(url, timeout=settings.fetch_timeout_s, stream=True,
                          headers={"User-Agent": USER_AGENT}) as resp:
            if resp.status_code != 200:
                raise invalid("invalidInputImage", f"Fetching the image URL answered HTTP {resp.status_code}.",
                              parameter)
            data = bytearray()
            for chunk in resp.iter_content(64 * 1024):
                data += chunk
                if len(data) > limit:
                    raise ApiError("imageTooLarge", f"The image is larger than {limit} bytes.", parameter=parameter)
            return bytes(data)
    except requests.RequestException as exc:
        raise invalid("invalidInputImage", f"Could not fetch the image URL ({type(exc).__name__}).",
                      parameter) from None


def decode(data: bytes, source: str, parameter: str, settings: Settings,
           formats: tuple[str, ...] = CAPTION_FORMATS) -> DecodedImage:
    """Check the bytes are an image of an accepted format within the limits, and decode them."""
    allowed = ", ".join("JPG" if f == "JPEG" else f for f in formats)
    if len(data) > settings.max_image_bytes:
        raise ApiError("imageTooLarge", f"The image is larger than {settings.max_image_bytes} bytes.",
                       parameter=parameter)
    kind = sniff(data)
    if kind is None:
        raise invalid("invalidInputImage", f"The data is not an image in a supported format ({allowed}).", parameter)
    if kind not in formats:
        raise invalid("unsupportedImageFormat", f"{kind} images are not supported here; use {allowed}.", parameter)
    try:
        img = Image.open(io.BytesIO(data), formats=[kind])
        if img.width * img.height > settings.max_image_pixels:
            raise ApiError("imageTooLarge", f"The image has more than {settings.max_image_pixels} pixels.",
                           parameter=parameter)
        img.load()
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError("imageTooLarge", "The image has too many pixels.", parameter=parameter) from None
    except Exception as exc:  # Pillow raises several types for corrupt data
        raise invalid("invalidInputImage", f"The {kind} data is corrupt or truncated ({type(exc).__name__}).",
                      parameter) from None
    return DecodedImage(data=data, format=kind, width=img.width, height=img.height, source=source, pixels=img)


def load(value: object, parameter: str, settings: Settings, uploads: Callable[[str], DecodedImage | None],
         formats: tuple[str, ...] = CAPTION_FORMATS, missing_code: str = "missingInputImage") -> DecodedImage:
    """Resolve an image reference (see the module docstring) into a DecodedImage, or raise ApiError."""
    if value is None or value == "":
        raise invalid(missing_code, f"The parameter {parameter} is required.", parameter)
    if not isinstance(value, str):
        raise invalid("invalidInputImage", f"The parameter {parameter} must be a string.", parameter)
    if is_uuid(value):
        found = uploads(value.lower())
        if found is None:
            raise invalid("invalidInputImage", f"No uploaded image has the UUID {value}.", parameter)
        return found
    match = DATA_URI_RE.match(value)
    if match:
        return decode(_b64decode(match.group(3), parameter, settings.max_image_bytes), "dataURI", parameter,
                      settings, formats)
    if value.startswith(("http://", "https://")):
        return decode(_fetch(value, parameter, settings), "url", parameter, settings, formats)
    if value.startswith("data:"):
        raise invalid("invalidInputImage", "A data URI must look like data:<mediaType>;base64,<data>.", parameter)
    return decode(_b64decode(value, parameter, settings.max_image_bytes), "base64", parameter, settings, formats)
