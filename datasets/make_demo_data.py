"""Generate the demo dataset: 10 classes of drawn shapes and textures, as PNG files in ImageNet layout.

    python datasets/make_demo_data.py --out data/demo            # 200 train + 50 val images per class
    python datasets/make_demo_data.py --preset study --out data/study

``--preset study`` makes the harder set of the accuracy study (docs/study.md): 20 classes (the demo's
10 plus 10 that look alike at 32 px: pentagons and hexagons next to circles, crosshatch next to
checkerboards, ...), lower contrast, the object or texture on only part of the image, and clutter
(short strokes) over it; 100 train + 50 val images per class.

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
# the study preset's classes: the demo's and ten that resemble them
STUDY_CLASSES = CLASSES + (
    "pentagon",
    "hexagon",
    "star",
    "ellipse",
    "diagonal_cross",
    "grid",
    "crosshatch",
    "concentric",
    "waves",
    "zigzag",
)
SHAPES = {"circle", "square", "triangle", "cross", "ring", "pentagon", "hexagon", "star", "ellipse", "diagonal_cross"}
PRESETS = {
    "demo": {"classes": 10, "train_per_class": 200, "val_per_class": 50, "hard": False},
    "study": {"classes": 20, "train_per_class": 100, "val_per_class": 50, "hard": True},
}
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
    elif name in ("pentagon", "hexagon"):
        sides = 5 if name == "pentagon" else 6
        draw.regular_polygon((cx, cy, radius), sides, rotation=float(rng.uniform(0, 360 / sides)), fill=fill)
    elif name == "star":
        turn = rng.uniform(0, 2 * np.pi)
        angles = turn + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.4, 0.5))
        draw.polygon(list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles))), fill=fill)
    elif name == "ellipse":
        draw.polygon(_rotated_ellipse(cx, cy, radius, radius * rng.uniform(0.4, 0.6), rng.uniform(0, np.pi)), fill=fill)
    elif name == "diagonal_cross":
        arm = radius * rng.uniform(0.25, 0.4)
        for angle in (np.pi / 4, 3 * np.pi / 4):
            draw.polygon(_rotated_rectangle(cx, cy, radius, arm, angle), fill=fill)


def _rotated_ellipse(cx: float, cy: float, a: float, b: float, angle: float) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    return list(zip(cx + x * np.cos(angle) - y * np.sin(angle), cy + x * np.sin(angle) + y * np.cos(angle)))


def _rotated_rectangle(cx: float, cy: float, half_length: float, half_width: float, angle: float) -> list:
    corners = np.array(
        [[-half_length, -half_width], [half_length, -half_width], [half_length, half_width], [-half_length, half_width]]
    )
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]


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
    elif name == "grid":
        line = width / 3
        for v in steps:
            draw.rectangle((0, v, size, v + line), fill=fill)
            draw.rectangle((v, 0, v + line, size), fill=fill)
    elif name == "crosshatch":
        line = width / 2
        for x in steps:
            for sign in (1, -1):
                draw.polygon(
                    [(x, 0), (x + line, 0), (x + line + sign * size, size), (x + sign * size, size)], fill=fill
                )
    elif name == "concentric":
        cx, cy = rng.uniform(0, size, size=2)
        for r in np.arange(phase, 1.5 * size, period):
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(1, int(width / 2)))
    elif name in ("waves", "zigzag"):
        xs = np.linspace(0, size, 64 if name == "waves" else 9)
        amplitude = period * rng.uniform(0.3, 0.5)
        if name == "waves":
            offsets = amplitude * np.sin(2 * np.pi * xs / (period * rng.uniform(2, 3)))
        else:
            offsets = amplitude * np.where(np.arange(len(xs)) % 2 == 0, 1.0, -1.0)
        for y in steps:
            draw.line(list(zip(xs, y + offsets)), fill=fill, width=max(1, int(width / 2)))


def _draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A few short strokes in random colours over the whole image (the study preset)."""
    for _ in range(int(rng.integers(3, 7))):
        start = rng.uniform(0, size, size=2)
        end = start + rng.normal(0, 0.15 * size, size=2)
        draw.line([tuple(start), tuple(end)], fill=_colour(rng, 0, 256), width=int(size * rng.uniform(0.02, 0.05)))


def render(name: str, seed: int, size: int, hard: bool = False) -> Image.Image:
    """One image of class ``name``: a random colour scheme, position, scale and pixel noise.

    ``hard`` (the study preset): lower contrast, textures on a random part of the image only, clutter.
    """
    rng = np.random.default_rng(seed)
    big = size * SUPERSAMPLE
    background = _colour(rng, 0, 110)
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    if hard:  # the fill differs from the background by 50-110 levels per channel, either way
        fill = tuple(int(np.clip(c + rng.choice((-1, 1)) * rng.integers(50, 110), 0, 255)) for c in background)
    else:
        fill = _colour(rng, 140, 256)
    if name in SHAPES:
        _draw_shape(draw, name, rng, big, fill)
    elif hard:  # the texture covers a random rectangle of 45-80% of the side
        layer = Image.new("RGB", (big, big), background)
        _draw_texture(ImageDraw.Draw(layer), name, rng, big, fill)
        side = rng.uniform(0.45, 0.8, size=2) * big
        left, top = rng.uniform(0, big - side[0]), rng.uniform(0, big - side[1])
        box = tuple(int(v) for v in (left, top, left + side[0], top + side[1]))
        image.paste(layer.crop(box), box[:2])
    else:
        _draw_texture(draw, name, rng, big, fill)
    if hard:
        _draw_clutter(draw, rng, big)
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
    preset: str = "demo",
) -> int:
    """Write the dataset under ``out``; returns the number of images written (existing ones are kept).

    ``image_format``: "png" (lossless, the demo) or "jpeg" (quality 90, like ImageNet's files).
    ``preset``: "demo" (10 classes) or "study" (20 harder classes, see the module docstring); the image
    counts are the arguments'. Raises ValueError when ``out`` holds a dataset generated with other arguments.
    """
    settings = {
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "size": size,
        "seed": seed,
        "format": image_format,
    }
    if preset != "demo":  # the demo's manifest stays as it was
        settings["preset"] = preset
    hard = PRESETS[preset]["hard"]
    classes = STUDY_CLASSES[: PRESETS[preset]["classes"]]
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
        for label, name in enumerate(classes):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                path = folder / f"{i:05d}{suffix}"
                if path.exists():
                    continue
                image_seed = seed * 10**8 + label * 10**7 + offset + i
                temp = path.with_suffix(".tmp")
                render(name, image_seed, size, hard).save(temp, **save_options)
                temp.replace(path)
                written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder (default data/demo)")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="demo",
        help="demo: 10 classes, 200 + 50 images each (default); study: 20 harder classes, 100 + 50 each",
    )
    parser.add_argument("--train-per-class", type=int, default=None, help="default: the preset's")
    parser.add_argument("--val-per-class", type=int, default=None, help="default: the preset's")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("png", "jpeg"), default="png", help="image files (default png)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    args.train_per_class = preset["train_per_class"] if args.train_per_class is None else args.train_per_class
    args.val_per_class = preset["val_per_class"] if args.val_per_class is None else args.val_per_class
    if args.train_per_class < 1 or args.val_per_class < 1:
        parser.error("--train-per-class and --val-per-class must be at least 1")
    if args.size < 8:
        parser.error(f"--size must be at least 8 pixels, got {args.size}")
    try:
        written = generate(
            args.out, args.train_per_class, args.val_per_class, args.size, args.seed, args.format, args.preset
        )
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    total = preset["classes"] * (args.train_per_class + args.val_per_class)
    print(f"{args.preset} data: {total} images of {preset['classes']} classes in {args.out} ({written} written now)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
