"""A real dataset made here: scikit-learn's handwritten digits as a prepared spotsweep dataset.

`sklearn.datasets.load_digits` ships with scikit-learn (1,797 images of 8x8 pixels, 16 grey
levels, ten classes; nothing is downloaded). Each image is scaled to 0..255, enlarged to `size`
pixels (nearest neighbour: the strokes stay sharp, as in the original scans' grid) and saved as
an RGB PNG in a folder named after its digit; `shared.datasets.prepare` then splits the folders
into train and a stratified, seeded test split with a checksummed manifest, as for any dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from shared.datasets import prepare
from shared.manifest import Manifest

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GREY_LEVELS = 16  # load_digits's pixel values run 0..16


def write_digit_folders(root: Path, size: int = 32, per_class: int | None = None) -> Path:
    """Write `root/<digit name>/<index>.png` for the digits (the first `per_class` of each
    class, or all of them); returns `root`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    taken = {name: 0 for name in CLASS_NAMES}
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        name = CLASS_NAMES[int(target)]
        if per_class is not None and taken[name] >= per_class:
            continue
        taken[name] += 1
        grey = np.clip(np.round(pixels * (255.0 / GREY_LEVELS)), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey, "L").resize((size, size), Image.Resampling.NEAREST).convert("RGB")
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:04d}.png")
    return root


def prepare_digits(
    root: Path, size: int = 32, per_class: int | None = None, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Path, Manifest]:
    """The digits as a prepared dataset in `root/prepared` (folders in `root/raw`): its path and manifest."""
    raw = write_digit_folders(root / "raw", size, per_class)
    manifest = prepare(raw, root / "prepared", test_fraction=test_fraction, seed=seed, name="digits")
    return root / "prepared", manifest
