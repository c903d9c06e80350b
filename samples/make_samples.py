"""Draw the sample images kept beside this script (PNG, JPG and WEBP, a few KB each).

The images are made here, with Pillow, so the project owns them. Each shows
something different (a gradient, flat shapes, stripes, a checkerboard, a dark
scene with dots, a portrait-format scene) so the emulator's captions differ.

Run: python samples/make_samples.py   (rewrites the files in place)
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image
from PIL import ImageDraw

HERE = Path(__file__).resolve().parent


def sunset_gradient() -> Image.Image:
    """Landscape, 320x200: orange at the top fading into dark blue at the bottom."""
    img = Image.new("RGB", (320, 200))
    top, bottom = (250, 140, 40), (10, 20, 80)
    draw = ImageDraw.Draw(img)
    for y in range(200):
        t = y / 199
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom))
        draw.line([(0, y), (319, y)], fill=colour)
    return img


def shapes_on_white() -> Image.Image:
    """Square, 256x256: a red disc, a blue square and a green triangle on white."""
    img = Image.new("RGB", (256, 256), "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse([20, 20, 120, 120], fill=(220, 30, 30))
    draw.rectangle([140, 30, 230, 120], fill=(30, 60, 210))
    draw.polygon([(70, 150), (20, 235), (120, 235)], fill=(30, 170, 60))
    return img


def forest_portrait() -> Image.Image:
    """Portrait, 180x320: green canopy over brown trunks and darker ground."""
    img = Image.new("RGB", (180, 320), (40, 120, 50))
    draw = ImageDraw.Draw(img)
    for x in (25, 80, 140):
        draw.rectangle([x, 120, x + 16, 280], fill=(110, 70, 30))
    draw.rectangle([0, 280, 179, 319], fill=(60, 45, 25))
    for i, y in enumerate(range(0, 120, 12)):
        draw.ellipse([(i * 37) % 160, y, (i * 37) % 160 + 40, y + 30], fill=(70, 160, 60))
    return img


def night_sky() -> Image.Image:
    """Landscape, 320x180: near-black sky with white stars and a pale moon."""
    img = Image.new("RGB", (320, 180), (8, 10, 30))
    draw = ImageDraw.Draw(img)
    rng = random.Random(7)
    for _ in range(60):
        x, y = rng.randrange(320), rng.randrange(180)
        draw.point((x, y), fill=(255, 255, 240))
    draw.ellipse([240, 20, 280, 60], fill=(235, 235, 200))
    return img


def checkerboard() -> Image.Image:
    """Square, 240x240: black and white squares, 30 px each."""
    img = Image.new("L", (240, 240), 255)
    draw = ImageDraw.Draw(img)
    for row in range(8):
        for col in range(8):
            if (row + col) % 2:
                draw.rectangle([col * 30, row * 30, col * 30 + 29, row * 30 + 29], fill=0)
    return img


def pastel_stripes() -> Image.Image:
    """Landscape, 300x200: horizontal pastel pink, yellow and light blue stripes."""
    img = Image.new("RGB", (300, 200))
    draw = ImageDraw.Draw(img)
    colours = [(250, 190, 210), (250, 240, 170), (180, 215, 250)]
    for i in range(10):
        draw.rectangle([0, i * 20, 299, i * 20 + 19], fill=colours[i % 3])
    return img


SAMPLES = {
    "sunset-gradient.png": (sunset_gradient, {"optimize": True}),
    "shapes-on-white.png": (shapes_on_white, {"optimize": True}),
    "forest-portrait.jpg": (forest_portrait, {"quality": 80}),
    "night-sky.jpg": (night_sky, {"quality": 80}),
    "checkerboard.webp": (checkerboard, {"lossless": True}),
    "pastel-stripes.webp": (pastel_stripes, {"quality": 80}),
}


def main() -> None:
    for name, (draw, options) in SAMPLES.items():
        path = HERE / name
        draw().save(path, **options)
        print(f"{name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
