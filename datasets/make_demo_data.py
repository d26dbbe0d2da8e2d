"""Generate the demo dataset: 10 classes of drawn shapes and textures, as PNG files in ImageNet layout.

    python datasets/make_demo_data.py --out data/demo            # 200 train + 50 val images per class
    python datasets/make_demo_data.py --task new-shapes --out data/demo-transfer   # 10 other classes

``--task new-shapes`` draws ten classes the demo's models never saw (pentagons, stars, zigzags, ...), in the
same style: a transfer task for prompt tuning (ToE/vpt/run/demo.sh).

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
# --task new-shapes: shapes and textures of another kind, for transfer from a model trained on CLASSES
NEW_CLASSES = (
    "pentagon",
    "hexagon",
    "star",
    "semicircle",
    "ellipse",
    "grid",
    "zigzag",
    "concentric_rings",
    "small_crosses",
    "bricks",
)
TASKS = {"shapes": CLASSES, "new-shapes": NEW_CLASSES}
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


def _draw_new_shape(draw: ImageDraw.ImageDraw, name: str, rng: np.random.Generator, size: int, fill) -> None:
    radius = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    turn = float(rng.uniform(0, 360))
    if name in ("pentagon", "hexagon"):
        draw.regular_polygon((cx, cy, radius), 5 if name == "pentagon" else 6, rotation=turn, fill=fill)
    elif name == "star":
        angles = np.radians(turn) + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2, radius * 0.42, radius)
        draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles)], fill=fill)
    elif name == "semicircle":
        draw.pieslice((cx - radius, cy - radius, cx + radius, cy + radius), turn, turn + 180, fill=fill)
    elif name == "ellipse":
        a, b = (radius, radius * 0.45) if rng.random() < 0.5 else (radius * 0.45, radius)
        draw.ellipse((cx - a, cy - b, cx + a, cy + b), fill=fill)


def _draw_new_texture(draw: ImageDraw.ImageDraw, name: str, rng: np.random.Generator, size: int, fill) -> None:
    period = rng.uniform(0.14, 0.25) * size
    width = max(1, int(period * rng.uniform(0.15, 0.3)))
    steps = np.arange(-size, 2 * size, period) + rng.uniform(0, period)
    if name == "grid":
        for t in steps:
            draw.line((0, t, size, t), fill=fill, width=width)
            draw.line((t, 0, t, size), fill=fill, width=width)
    elif name == "zigzag":
        for y in steps:
            points = [
                (x, y + (period / 2 if i % 2 else 0)) for i, x in enumerate(np.arange(0, size + period, period / 2))
            ]
            draw.line(points, fill=fill, width=width)
    elif name == "concentric_rings":
        cx, cy = rng.uniform(0, size, size=2)
        for r in np.arange(period / 2, 1.5 * size, period):
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=width)
    elif name == "small_crosses":
        arm = period * 0.3
        for y in steps:
            for x in steps:
                draw.line((x - arm, y, x + arm, y), fill=fill, width=width)
                draw.line((x, y - arm, x, y + arm), fill=fill, width=width)
    elif name == "bricks":
        for row, y in enumerate(steps):
            shift = period if row % 2 else 0
            for x in np.arange(-2 * size, 2 * size, 2 * period) + shift:
                draw.rectangle((x, y, x + 2 * period, y + period), outline=fill, width=width)


def render(name: str, seed: int, size: int) -> Image.Image:
    """One image of class ``name``: a random colour scheme, position, scale and pixel noise."""
    rng = np.random.default_rng(seed)
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), _colour(rng, 0, 110))
    draw = ImageDraw.Draw(image)
    fill = _colour(rng, 140, 256)
    if name in CLASSES[:5]:
        _draw_shape(draw, name, rng, big, fill)
    elif name in CLASSES:
        _draw_texture(draw, name, rng, big, fill)
    elif name in NEW_CLASSES[:5]:
        _draw_new_shape(draw, name, rng, big, fill)
    else:
        _draw_new_texture(draw, name, rng, big, fill)
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
    task: str = "shapes",
) -> int:
    """Write the dataset under ``out``; returns the number of images written (existing ones are kept).

    ``image_format``: "png" (lossless, the demo) or "jpeg" (quality 90, like ImageNet's files); ``task``:
    "shapes" (the demo's classes) or "new-shapes" (ten other classes, see the module docstring).
    Raises ValueError when ``out`` holds a demo dataset generated with other arguments.
    """
    settings = {
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "size": size,
        "seed": seed,
        "format": image_format,
        **({"task": task} if task != "shapes" else {}),  # demo folders made before tasks existed stay valid
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
        for label, name in enumerate(TASKS[task]):
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
    parser.add_argument(
        "--task", choices=tuple(TASKS), default="shapes", help="shapes (the demo) or new-shapes (a transfer task)"
    )
    args = parser.parse_args(argv)
    if args.train_per_class < 1 or args.val_per_class < 1:
        parser.error("--train-per-class and --val-per-class must be at least 1")
    if args.size < 8:
        parser.error(f"--size must be at least 8 pixels, got {args.size}")
    try:
        written = generate(
            args.out, args.train_per_class, args.val_per_class, args.size, args.seed, args.format, args.task
        )
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    total = len(CLASSES) * (args.train_per_class + args.val_per_class)
    print(f"demo data: {total} images of {len(CLASSES)} classes in {args.out} ({written} written now)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
