"""Generate the demo dataset: 10 classes of drawn shapes and textures, as PNG files in ImageNet layout.

    python datasets/make_demo_data.py --out data/demo            # 200 train + 50 val images per class

Writes OUT/train/<class>/<n>.png and OUT/val/<class>/<n>.png. The same arguments always give the same
bytes (every image has its own seeded generator), so runs on the demo data are reproducible. Needs only
numpy and Pillow. Existing complete output is kept; a partial one is completed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal_stripes",
    "vertical_stripes",
    "diagonal_stripes",
    "checkerboard",
    "dots",
)
SUPERSAMPLE = 4  # draw large, then downscale: anti-aliased edges


def _colour(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(low, high, size=3))


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, rng: np.random.Generator, size: int, fill) -> None:
    radius = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if name == "circle":
        draw.ellipse(box, fill=fill)
    elif name == "square":
        draw.regular_polygon((cx, cy, radius), 4, rotation=float(rng.uniform(0, 90)), fill=fill)
    elif name == "triangle":
        draw.regular_polygon((cx, cy, radius), 3, rotation=float(rng.uniform(0, 120)), fill=fill)
    elif name == "cross":
        arm = radius * rng.uniform(0.25, 0.4)
        draw.rectangle((cx - radius, cy - arm, cx + radius, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - radius, cx + arm, cy + radius), fill=fill)
    elif name == "ring":
        draw.ellipse(box, outline=fill, width=max(1, int(radius * rng.uniform(0.25, 0.4))))


def _draw_texture(draw: ImageDraw.ImageDraw, name: str, rng: np.random.Generator, size: int, fill) -> None:
    period = rng.uniform(0.12, 0.25) * size
    width = period * rng.uniform(0.35, 0.6)
    phase = rng.uniform(0, period)
    steps = np.arange(-size, 2 * size, period) + phase
    if name == "horizontal_stripes":
        for y in steps:
            draw.rectangle((0, y, size, y + width), fill=fill)
    elif name == "vertical_stripes":
        for x in steps:
            draw.rectangle((x, 0, x + width, size), fill=fill)
    elif name == "diagonal_stripes":
        sign = 1 if rng.random() < 0.5 else -1
        for x in steps:
            draw.polygon([(x, 0), (x + width, 0), (x + width + sign * size, size), (x + sign * size, size)], fill=fill)
    elif name == "checkerboard":
        for i, y in enumerate(steps):
            for j, x in enumerate(steps):
                if (i + j) % 2 == 0:
                    draw.rectangle((x, y, x + period, y + period), fill=fill)
    elif name == "dots":
        dot = width / 2
        for y in steps:
            for x in steps:
                draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=fill)


def render(name: str, seed: int, size: int) -> Image.Image:
    """One image of class ``name``: a random colour scheme, position, scale and pixel noise."""
    rng = np.random.default_rng(seed)
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), _colour(rng, 0, 110))
    draw = ImageDraw.Draw(image)
    fill = _colour(rng, 140, 256)
    if name in CLASSES[:5]:
        _draw_shape(draw, name, rng, big, fill)
    else:
        _draw_texture(draw, name, rng, big, fill)
    pixels = np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.float32)
    pixels += rng.normal(0, 12, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def generate(
    out: Path,
    train_per_class: int = 200,
    val_per_class: int = 50,
    size: int = 32,
    seed: int = 0,
    image_format: str = "png",
) -> int:
    """Write the dataset under ``out``; returns the number of images written (existing ones are kept).

    ``image_format``: "png" (lossless, the demo) or "jpeg" (quality 90, like ImageNet's files).
    Raises ValueError when ``out`` holds a demo dataset generated with other arguments.
    """
    settings = {
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "size": size,
        "seed": seed,
        "format": image_format,
    }
    suffix, save_options = (
        (".png", {"format": "PNG"}) if image_format == "png" else (".jpg", {"format": "JPEG", "quality": 90})
    )
    manifest = out / "demo.json"
    if manifest.exists() and json.loads(manifest.read_text()) != settings:
        raise ValueError(
            f"{out} holds demo data made with other arguments ({manifest}); delete it or pick another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(settings))
    written = 0
    for split, count, offset in (("train", train_per_class, 0), ("val", val_per_class, 10**6)):
        for label, name in enumerate(CLASSES):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                path = folder / f"{i:05d}{suffix}"
                if path.exists():
                    continue
                image_seed = seed * 10**8 + label * 10**7 + offset + i
                temp = path.with_suffix(".tmp")
                render(name, image_seed, size).save(temp, **save_options)
                temp.replace(path)
                written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder (default data/demo)")
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--val-per-class", type=int, default=50)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("png", "jpeg"), default="png", help="image files (default png)")
    args = parser.parse_args(argv)
    if args.train_per_class < 1 or args.val_per_class < 1:
        parser.error("--train-per-class and --val-per-class must be at least 1")
    if args.size < 8:
        parser.error(f"--size must be at least 8 pixels, got {args.size}")
    try:
        written = generate(args.out, args.train_per_class, args.val_per_class, args.size, args.seed, args.format)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    total = len(CLASSES) * (args.train_per_class + args.val_per_class)
    print(f"demo data: {total} images of {len(CLASSES)} classes in {args.out} ({written} written now)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
