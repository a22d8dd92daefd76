"""Image files checked from their header, before anything decodes them.

Decoding allocates width x height x channels bytes (times the frames of an animated GIF, all of
which TensorFlow decodes), whatever the file's size: a 400 KB PNG can claim 20000 x 20000
pixels and take gigabytes to decode. So an image is first opened with Pillow, which reads only
the header, and refused when it claims more pixels than the limit.

Only the formats the worker decodes (TensorFlow's `decode_image`: JPEG, PNG, GIF, BMP) are
tried, and by content, never by extension: a `.png` that is really EPS is refused without ever
reaching Ghostscript, and a `.jpg` that is really a PNG is fine.

The limit is process-wide, as Pillow's own is: `set_pixel_limit` (the worker calls it with its
`max_image_pixels` setting) sets both, so that any other `Image.open` in the process refuses
such a file too. `dataset prepare`, the worker's decode and `worker predict` all check here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from shared.errors import BadInputError

SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP")  # what tf.io.decode_image reads
DEFAULT_MAX_PIXELS = 50_000_000  # 50 megapixels: above any camera's photo, 150 MB decoded as RGB
_limit = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says: enough to know what decoding it will cost."""

    format: str  # Pillow's name: JPEG (or MPO, a JPEG with extra pictures), PNG, GIF, BMP
    width: int
    height: int
    frames: int  # decoded frames: a GIF's all, 1 otherwise (TensorFlow keeps a PNG's first)

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames


def set_pixel_limit(max_pixels: int) -> None:
    """Make `max_pixels` this process's limit: `check_image`'s default, and Pillow's (which warns
    above it and raises above twice it, for every `Image.open`)."""
    global _limit
    if max_pixels < 1:
        raise BadInputError(f"the pixel limit must be positive, got {max_pixels}")
    _limit = max_pixels
    Image.MAX_IMAGE_PIXELS = max_pixels


def pixel_limit() -> int:
    """This process's limit (DEFAULT_MAX_PIXELS unless `set_pixel_limit` said otherwise)."""
    return _limit


def check_image(path: Path, max_pixels: int | None = None) -> ImageHeader:
    """The header of the image at `path`, read without decoding its pixels.

    Raises:
        BadInputError: naming the file, when it is not a JPEG, PNG, GIF or BMP by content, is
            unreadable, or claims more than `max_pixels` (default: the process's limit).
    """
    limit = max_pixels or _limit
    try:
        header = _read_header(Path(path))
    except Image.DecompressionBombError:  # Pillow's own check: over twice its limit
        raise BadInputError(f"image {path}: more than {limit:,} pixels (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise BadInputError(f"image {path} is {_sniff(Path(path))}, not a {_format_list()} image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # a truncated or corrupt header
        raise BadInputError(f"image {path}: unreadable ({exc})") from None
    if header.pixels > limit:
        frames = f" x {header.frames} frames" if header.frames > 1 else ""
        raise BadInputError(
            f"image {path}: {header.width} x {header.height}{frames} pixels, over the limit of {limit:,} "
            "(max_image_pixels; a decompression bomb?)"
        )
    return header


def _read_header(path: Path) -> ImageHeader:
    with warnings.catch_warnings():
        # Pillow warns between its limit and twice it; we refuse such files ourselves.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path, formats=SUPPORTED_FORMATS) as image:
            frames = image.n_frames if image.format == "GIF" else 1  # skims the frames, decodes none
            return ImageHeader(str(image.format), image.width, image.height, frames)


def _sniff(path: Path) -> str:
    """The format a file's first bytes announce, by Pillow's signature tests alone: they compare
    bytes and parse nothing, so naming an EPS file never starts Ghostscript."""
    with open(path, "rb") as handle:
        prefix = handle.read(16)
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        if accept is not None and accept(prefix) is True:
            return name
    return "of an unknown format"


def _format_list() -> str:
    return ", ".join(SUPPORTED_FORMATS[:-1]) + f" or {SUPPORTED_FORMATS[-1]}"
