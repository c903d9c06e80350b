"""Deterministic captions measured from an image's pixels, and the cost formula.

This is not a neural model and does not recognise objects. It measures the
picture and writes down what it measured: orientation, size, dominant
colours, brightness, contrast, colourfulness and a few layouts (gradients,
stripes, flat shapes, bright spots on a dark ground). The same pixels always
give the same text; different pictures almost always give different text.

Cost (USD), when the task asks for it with `includeCost: true`:

    cost = 0.0019 + 0.0001 * (width * height / 1_000_000), rounded to 6 decimals

that is, a flat $0.0019 per image (the documented price of a LLaVA caption)
plus $0.0001 per megapixel.
"""

from __future__ import annotations

import colorsys
from collections import Counter

from PIL import Image
from PIL import ImageChops
from PIL import ImageFilter
from PIL import ImageOps
from PIL import ImageStat

BASE_COST = 0.0019
COST_PER_MEGAPIXEL = 0.0001
SAMPLE_SIDE = 64  # the picture is measured on a copy at most this many pixels wide and high


def cost(width: int, height: int) -> float:
    """The cost of captioning a width x height image (see the module docstring)."""
    return round(BASE_COST + COST_PER_MEGAPIXEL * width * height / 1_000_000, 6)


def colour_name(r: int, g: int, b: int) -> str:
    """A plain English name for one RGB colour."""
    h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
    deg = h * 360
    if v < 0.16:
        return "black"
    if s < 0.16:
        return "white" if v > 0.86 else "grey" if v > 0.4 else "dark grey"
    if 15 <= deg < 45 and v < 0.6:
        return "brown"
    if deg < 15 or deg >= 345:
        name = "pink" if s < 0.45 and v > 0.75 else "red"
    elif deg < 45:
        name = "orange"
    elif deg < 70:
        name = "yellow"
    elif deg < 160:
        name = "green"
    elif deg < 195:
        name = "teal"
    elif deg < 255:
        name = "blue"
    elif deg < 290:
        name = "purple"
    else:
        name = "pink"
    if v < 0.45:
        return "dark " + name
    if s < 0.45 and v > 0.75 and name != "pink":
        return "light " + name
    return name


def _extremes(rgb: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Per pixel, the largest and the smallest of R, G and B (their difference is the chroma)."""
    r, g, b = rgb.split()
    return ImageChops.lighter(ImageChops.lighter(r, g), b), ImageChops.darker(ImageChops.darker(r, g), b)


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _names(img: Image.Image) -> list[str]:
    data = img.tobytes()
    return [colour_name(data[i], data[i + 1], data[i + 2]) for i in range(0, len(data), 3)]


def _dominant(img: Image.Image) -> str:
    counts = Counter(_names(img)).most_common()
    total = sum(n for _, n in counts)
    main = [name for name, n in counts[:3] if n / total >= 0.08] or [counts[0][0]]
    if counts[0][1] / total >= 0.4:
        return f"mostly {main[0]}" + (f" with {_join(main[1:])}" if main[1:] else "")
    return f"a mix of {_join(main)}"


def _band_colour(img: Image.Image, box: tuple[int, int, int, int]) -> str:
    return Counter(_names(img.crop(box))).most_common(1)[0][0]


def _flatness(rgb: Image.Image) -> tuple[float, float]:
    """Shares of the pixels covered by the commonest colour and by the six commonest, at 4 bits per channel."""
    coarse = Image.eval(rgb, lambda v: v & 0b11110000)
    counts = sorted((n for n, _ in coarse.getcolors(rgb.width * rgb.height)), reverse=True)
    total = rgb.width * rgb.height
    return counts[0] / total, sum(counts[:6]) / total


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _layout(rgb: Image.Image, lum: Image.Image, top1: float, top6: float) -> str | None:
    """A phrase about the arrangement, or None when nothing simple fits."""
    if top1 >= 0.97:
        return "a single flat colour"
    flat = top6 >= 0.85
    w, h = lum.size
    stat = ImageStat.Stat(lum)
    bright_share = sum(lum.histogram()[200:]) / (w * h)
    if stat.mean[0] < 60 and 0 < bright_share < 0.08:
        return "small bright spots on a dark background"
    edges = ImageStat.Stat(lum.filter(ImageFilter.FIND_EDGES).crop((1, 1, w - 1, h - 1))).mean[0] \
        if w > 2 and h > 2 else 0.0
    rows = [ImageStat.Stat(lum.crop((0, y, w, y + 1))) for y in range(h)]
    cols = [ImageStat.Stat(lum.crop((x, 0, x + 1, h))) for x in range(w)]
    row_means = [r.mean[0] for r in rows]
    col_means = [c.mean[0] for c in cols]
    spread = max(row_means) - min(row_means), max(col_means) - min(col_means)
    if _median([r.stddev[0] for r in rows]) < 4 and spread[0] > 10:
        kind = "horizontal"
    elif _median([c.stddev[0] for c in cols]) < 4 and spread[1] > 10:
        kind = "vertical"
    else:
        kind = None
    if kind and not flat and edges < 6:
        third_h, third_w = max(1, h // 3), max(1, w // 3)
        if kind == "horizontal":
            start, end = _band_colour(rgb, (0, 0, w, third_h)), _band_colour(rgb, (0, h - third_h, w, h))
            where = "at the top", "at the bottom"
        else:
            start, end = _band_colour(rgb, (0, 0, third_w, h)), _band_colour(rgb, (w - third_w, 0, w, h))
            where = "on the left", "on the right"
        if start != end:
            return f"a smooth gradient from {start} {where[0]} to {end} {where[1]}"
    if kind:
        return f"{kind} stripes"
    if flat:
        return "flat blocks of colour with sharp edges" if edges >= 6 else "a few flat areas of colour"
    if edges > 40:
        return "busy fine detail"
    return None


def describe(image: Image.Image) -> str:
    """The caption for these pixels, e.g. 'a landscape image, 640×480, mostly dark blue with orange, bright, ...'."""
    img = ImageOps.exif_transpose(image)
    width, height = img.size
    ratio = width / height
    orientation = "square" if 0.95 <= ratio <= 1.05 else "landscape" if ratio > 1 else "portrait"
    parts = [f"a {orientation} image", f"{width}×{height}"]

    transparent = False
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        alpha = img.convert("RGBA").getchannel("A")
        transparent = sum(alpha.histogram()[:128]) / (width * height) > 0.05
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    rgb = img.convert("RGB")
    points = rgb.copy()  # sampled without averaging, so that noise stays noise
    points.thumbnail((SAMPLE_SIDE, SAMPLE_SIDE), Image.Resampling.NEAREST)
    rgb.thumbnail((SAMPLE_SIDE, SAMPLE_SIDE), Image.Resampling.BOX)
    lum = rgb.convert("L")
    stat = ImageStat.Stat(lum)

    layout = _layout(rgb, lum, *_flatness(points))
    if layout:
        parts.append(layout)
    parts.append(_dominant(rgb))
    mean, spread = stat.mean[0], stat.stddev[0]
    parts.append("very dark" if mean < 40 else "dark" if mean < 90 else "medium brightness" if mean < 160
                 else "bright" if mean < 215 else "very bright")
    parts.append("high contrast" if spread > 70 else "low contrast" if spread < 20 else "moderate contrast")
    chroma = ImageStat.Stat(ImageChops.subtract(*_extremes(rgb))).mean[0] / 255
    parts.append("greyscale" if chroma < 0.04 else "muted colours" if chroma < 0.15
                 else "vivid colours" if chroma > 0.45 else "moderate colours")
    if transparent:
        parts.append("with transparent areas")
    return ", ".join(parts)
