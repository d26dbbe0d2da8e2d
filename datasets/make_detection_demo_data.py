"""Generate the detection demo dataset: drawn shapes with their boxes, in COCO layout.

    python datasets/make_detection_demo_data.py --out data/demo_coco     # 400 train + 100 val images

Writes OUT/train2017/*.png, OUT/val2017/*.png and OUT/annotations/instances_{train,val}2017.json.
Every image (56-80 px per side, so the patch grid varies; --image-size N: N x N px) holds 1 to
--max-objects (default 4) objects of five categories (ids 1-5: rectangle, ellipse, triangle, cross,
ring), each --object-size (default 12 32) pixels per side, in random colours over a noisy background;
each box is the object's exact extent. The same arguments always give the same bytes. Needs only numpy and Pillow.
An existing complete output is kept; one made with other arguments stops the script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ("rectangle", "ellipse", "triangle", "cross", "ring")
FOLDERS = ("train2017", "val2017")


def _colour(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(low, high, size=3))


def _draw(draw: ImageDraw.ImageDraw, category: str, box: tuple[int, int, int, int], fill, rng) -> None:
    x0, y0, x1, y1 = box
    if category == "rectangle":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif category == "ellipse":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif category == "triangle":
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    elif category == "cross":
        arm_w, arm_h = max(1, (x1 - x0) // 6), max(1, (y1 - y0) // 6)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((x0, cy - arm_h, x1 - 1, cy + arm_h - 1), fill=fill)
        draw.rectangle((cx - arm_w, y0, cx + arm_w - 1, y1 - 1), fill=fill)
    else:
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), outline=fill, width=max(2, min(x1 - x0, y1 - y0) // 5))


def render(
    seed: int, max_objects: int = 4, object_size: tuple[int, int] = (12, 32), image_size: int | None = None
) -> tuple[Image.Image, list[dict]]:
    """One image (``image_size`` px square, or 56-80 px per side when None) and its 1 to ``max_objects``
    objects of ``object_size`` (smallest, largest side in pixels): ``category_id`` 1-5, COCO ``bbox``
    [x, y, w, h], ``area``."""
    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(56, 81, size=2))  # drawn either way: one random stream
    if image_size is not None:
        width = height = image_size
    image = Image.new("RGB", (width, height), _colour(rng, 0, 100))
    draw = ImageDraw.Draw(image)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        w, h = (int(v) for v in rng.integers(object_size[0], object_size[1] + 1, size=2))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        label = int(rng.integers(len(CATEGORIES)))
        _draw(draw, CATEGORIES[label], (x, y, x + w, y + h), _colour(rng, 130, 256), rng)
        objects.append({"category_id": label + 1, "bbox": [x, y, w, h], "area": float(w * h)})
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 10, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), objects


def generate(
    out: Path,
    train_images: int = 400,
    val_images: int = 100,
    seed: int = 0,
    max_objects: int = 4,
    object_size: tuple[int, int] = (12, 32),
    image_size: int | None = None,
) -> int:
    """Write the dataset under ``out``; returns the number of images written (existing ones are kept).

    Raises ValueError when ``out`` holds a dataset generated with other arguments.
    """
    settings = {"train_images": train_images, "val_images": val_images, "seed": seed}
    if (max_objects, tuple(object_size)) != (4, (12, 32)):  # folders made before these options stay valid
        settings |= {"max_objects": max_objects, "object_size": list(object_size)}
    if image_size is not None:
        settings["image_size"] = image_size
    manifest = out / "demo.json"
    if manifest.exists() and json.loads(manifest.read_text()) != settings:
        raise ValueError(
            f"{out} holds demo data made with other arguments ({manifest}); delete it or pick another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(settings))
    (out / "annotations").mkdir(exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)]
    written = 0
    for folder, count, offset in zip(FOLDERS, (train_images, val_images), (0, 10**6)):
        (out / folder).mkdir(exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image_id = offset + i + 1
            image, objects = render(seed * 10**7 + image_id, max_objects, object_size, image_size)
            name = f"{image_id:012d}.png"
            path = out / folder / name
            if not path.exists():
                temp = path.with_suffix(".tmp")
                image.save(temp, format="PNG")
                temp.replace(path)
                written += 1
            images.append({"id": image_id, "file_name": name, "width": image.width, "height": image.height})
            for obj in objects:
                annotations.append({**obj, "id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0})
        annotation_file = out / "annotations" / f"instances_{folder}.json"
        temp = annotation_file.with_suffix(".tmp")
        temp.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        temp.replace(annotation_file)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", type=Path, default=Path("data/demo_coco"), help="output folder (default data/demo_coco)"
    )
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-objects", type=int, default=4, help="objects per image: 1 to this (default 4)")
    parser.add_argument(
        "--object-size", type=int, nargs=2, default=[12, 32], metavar=("LOW", "HIGH"), help="side in px (12 32)"
    )
    parser.add_argument(
        "--image-size", type=int, default=None, metavar="N", help="square images of N px (default: 56-80 px per side)"
    )
    args = parser.parse_args(argv)
    if args.train_images < 1 or args.val_images < 1:
        parser.error("--train-images and --val-images must be at least 1")
    if args.max_objects < 1:
        parser.error(f"--max-objects must be at least 1, got {args.max_objects}")
    if args.image_size is not None and not 8 <= args.image_size <= 1024:
        parser.error(f"--image-size must be between 8 and 1024 px, got {args.image_size}")
    smallest = 56 if args.image_size is None else args.image_size
    if not 2 <= args.object_size[0] <= args.object_size[1] <= smallest:
        parser.error(
            f"--object-size must satisfy 2 <= LOW <= HIGH <= {smallest} (the smallest image side), "
            f"got {args.object_size}"
        )
    try:
        written = generate(
            args.out,
            args.train_images,
            args.val_images,
            args.seed,
            args.max_objects,
            tuple(args.object_size),
            args.image_size,
        )
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    total = f"{args.train_images} train + {args.val_images} val images"
    print(f"detection demo data: {total} in {args.out} ({written} written now)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
