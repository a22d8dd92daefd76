"""A synthetic "flowers" dataset, so that the demo and the tests have real images without a download.

Each class is one flower type: petal count, petal colour and petal shape (round, pointed,
elongated). Within a class every image varies in position, scale, rotation, hue, background
(gradient + texture), grass, stem and small out-of-focus blobs of other colours, so that a
small CNN learns it well above chance but not perfectly in one epoch. Every image depends only on
(seed, class, index): the same arguments always draw the same pixels.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shared.datasets._files import Progress, report, write_atomic
from shared.errors import BadInputError

PETAL_COUNTS = (3, 4, 5, 6, 8, 10)
COLOURS = {  # name: (hue, saturation); red/pink and orange/yellow are close on purpose
    "red": (0.0, 0.9),
    "orange": (0.07, 0.9),
    "yellow": (0.15, 0.85),
    "blue": (0.6, 0.75),
    "purple": (0.77, 0.7),
    "pink": (0.95, 0.45),
    "white": (0.0, 0.05),
    "teal": (0.5, 0.7),
}
SHAPES = ("round", "pointed", "elongated")
MAX_CLASSES = len(PETAL_COUNTS) * len(COLOURS) * len(SHAPES)  # 144
_STEP = 41  # coprime with MAX_CLASSES: walks every combination, neighbours differ in several traits
STAMP_NAME = ".synth.json"  # written last: marks a complete synthesis with these parameters
SUPERSAMPLE = 2  # draw at 2x and downsample: cheap anti-aliasing


@dataclass(frozen=True)
class FlowerType:
    name: str
    petals: int
    colour: str
    shape: str


def flower_types(classes: int) -> list[FlowerType]:
    """The first `classes` flower types; the same list whatever the seed (names stay stable)."""
    if not 2 <= classes <= MAX_CLASSES:
        raise BadInputError(f"classes must be between 2 and {MAX_CLASSES}, got {classes}")
    width = max(2, len(str(classes - 1)))  # zero-padded so that names sort in class order
    types = []
    for index in range(classes):
        combo = index * _STEP % MAX_CLASSES
        colour = list(COLOURS)[combo % len(COLOURS)]
        petals = PETAL_COUNTS[combo // len(COLOURS) % len(PETAL_COUNTS)]
        shape = SHAPES[combo // (len(COLOURS) * len(PETAL_COUNTS))]
        name = f"flower_{index:0{width}d}_{petals}petal_{colour}_{shape}"
        types.append(FlowerType(name, petals, colour, shape))
    return types


def synthesize(
    out_dir: Path, classes: int, per_class: int, size: int, seed: int = 0, progress: Progress | None = None
) -> Path:
    """Draw `classes` x `per_class` PNG images of `size` px into out_dir/<class_name>/<n>.png.

    Re-running with the same arguments on a finished output returns at once; any other
    non-empty out_dir is refused so that stale class folders never mix into a dataset.
    """
    out_dir = Path(out_dir)
    _check_synth_args(per_class, size)
    types = flower_types(classes)
    params = {"version": 1, "classes": classes, "per_class": per_class, "size": size, "seed": seed}
    if _already_synthesized(out_dir, params):
        report(progress, len(types) * per_class, len(types) * per_class)
        return out_dir
    total, done = len(types) * per_class, 0
    for class_index, flower in enumerate(types):
        (out_dir / flower.name).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            rng = np.random.default_rng([seed, class_index, n])
            draw_flower(flower, size, rng).save(out_dir / flower.name / f"{n:04d}.png", compress_level=1)
            done += 1
            report(progress, done, total)
    write_atomic(out_dir / STAMP_NAME, json.dumps(params).encode())
    return out_dir


def _check_synth_args(per_class: int, size: int) -> None:
    if per_class < 1:
        raise BadInputError(f"per_class must be at least 1, got {per_class}")
    if not 16 <= size <= 1024:
        raise BadInputError(f"size must be between 16 and 1024 pixels, got {size}")


def _already_synthesized(out_dir: Path, params: dict) -> bool:
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return False
    stamp = out_dir / STAMP_NAME
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return True
    raise BadInputError(f"{out_dir} is not empty (and not a synthesis with these settings): remove it or pick another")


def draw_flower(flower: FlowerType, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of `flower`; all randomness comes from `rng`."""
    big = size * SUPERSAMPLE
    image = Image.fromarray(_background(big, rng))
    draw = ImageDraw.Draw(image)
    _draw_grass(draw, big, rng)
    _draw_blobs(draw, big, rng)
    radius = big * rng.uniform(0.2, 0.34)
    centre = (big * rng.uniform(0.3, 0.7), big * rng.uniform(0.28, 0.62))
    _draw_stem(draw, centre, big, rng)
    _draw_petals(draw, flower, centre, radius, rng)
    _draw_disc(draw, centre, radius, rng)
    small = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    small += rng.normal(0.0, 4.0, small.shape)  # sensor noise
    return Image.fromarray(np.clip(small, 0, 255).astype(np.uint8))


def _hsv(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(hue % 1.0, min(max(saturation, 0.0), 1.0), min(max(value, 0.0), 1.0))
    return int(red * 255), int(green * 255), int(blue * 255)


def _background(big: int, rng: np.random.Generator) -> np.ndarray:
    """A vertical gradient between two foliage/sky/soil colours plus a low-frequency texture.

    Built on a coarse grid and upsampled once: smooth, and far cheaper than per-pixel work."""
    top = np.array(_hsv(rng.uniform(0.15, 0.6), rng.uniform(0.2, 0.6), rng.uniform(0.35, 0.85)), np.float32)
    bottom = np.array(_hsv(rng.uniform(0.08, 0.35), rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.55)), np.float32)
    cells = int(rng.integers(3, 9))
    ramp = np.linspace(0.0, 1.0, cells, dtype=np.float32)[:, None, None]
    coarse = top * (1 - ramp) + bottom * ramp + rng.normal(0.0, rng.uniform(8.0, 28.0), (cells, cells, 3))
    coarse_image = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
    return np.asarray(coarse_image.resize((big, big), Image.Resampling.BICUBIC))


def _draw_grass(draw: ImageDraw.ImageDraw, big: int, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(4, 18))):
        x = rng.uniform(0, big)
        height = big * rng.uniform(0.1, 0.5)
        tip = (x + rng.uniform(-0.15, 0.15) * height, big - height)
        colour = _hsv(rng.uniform(0.2, 0.38), rng.uniform(0.4, 0.9), rng.uniform(0.25, 0.7))
        draw.line([(x, big), tip], fill=colour, width=max(1, int(big * rng.uniform(0.005, 0.02))))


def _draw_blobs(draw: ImageDraw.ImageDraw, big: int, rng: np.random.Generator) -> None:
    """Small out-of-focus blobs of any colour, so that colour alone is not the whole answer."""
    for _ in range(int(rng.integers(0, 4))):
        x, y, r = rng.uniform(0, big), rng.uniform(0, big), big * rng.uniform(0.03, 0.08)
        colour = _hsv(rng.uniform(0, 1), rng.uniform(0.3, 0.9), rng.uniform(0.5, 1.0))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def _draw_stem(draw: ImageDraw.ImageDraw, centre: tuple[float, float], big: int, rng: np.random.Generator) -> None:
    foot = (centre[0] + rng.uniform(-0.15, 0.15) * big, big)
    colour = _hsv(rng.uniform(0.22, 0.36), rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.6))
    draw.line([centre, foot], fill=colour, width=max(2, int(big * 0.03)))


def _petal_outline(shape: str) -> np.ndarray:
    """One petal in local units (x outward from the centre, y across), as an (n, 2) polygon."""
    t = np.linspace(0.0, 1.0, 14)
    if shape == "round":
        length, half_width = 1.0, 0.42 * np.sin(np.pi * t)
    elif shape == "pointed":  # broad near the base, straight taper to a sharp tip
        profile = np.sqrt(t) * (1 - t)
        length, half_width = 1.05, 0.4 * profile / profile.max()
    else:  # elongated: long and narrow
        length, half_width = 1.25, 0.16 * np.sin(np.pi * t)
    x = 0.12 + length * t
    return np.concatenate([np.stack([x, half_width], 1), np.stack([x, -half_width], 1)[::-1]])


def _draw_petals(
    draw: ImageDraw.ImageDraw, flower: FlowerType, centre: tuple[float, float], radius: float, rng: np.random.Generator
) -> None:
    hue, saturation = COLOURS[flower.colour]
    hue += rng.uniform(-0.025, 0.025)
    saturation *= rng.uniform(0.8, 1.1)
    outline = _petal_outline(flower.shape) * radius * rng.uniform(0.9, 1.1, 2)  # slight squash
    rotation = rng.uniform(0, 2 * math.pi)
    for petal in range(flower.petals):
        angle = rotation + 2 * math.pi * petal / flower.petals + rng.normal(0, 0.06)
        cos, sin = math.cos(angle), math.sin(angle)
        points = outline @ np.array([[cos, sin], [-sin, cos]]) + centre
        draw.polygon(points.ravel().tolist(), fill=_hsv(hue, saturation, rng.uniform(0.75, 1.0)))


def _draw_disc(
    draw: ImageDraw.ImageDraw, centre: tuple[float, float], radius: float, rng: np.random.Generator
) -> None:
    r = radius * rng.uniform(0.16, 0.26)
    colour = _hsv(rng.uniform(0.08, 0.15), rng.uniform(0.6, 1.0), rng.uniform(0.3, 0.8))
    draw.ellipse([centre[0] - r, centre[1] - r, centre[0] + r, centre[1] + r], fill=colour)
