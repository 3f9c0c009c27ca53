"""Decoding one image file (or in-memory bytes) into a fixed-size uint8 RGB array."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dfcil.errors import DataError

#: Extensions (any case) of the files read as images, the one set for every reader: image-folder
#: datasets and trees (directories and archives), Tiny ImageNet, and the folders and files of
#: ``dfcil learn / predict / evaluate``. Each is a format :func:`decode_image` (Pillow) decodes.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR  # Pillow < 9.1 has no Resampling


def is_image_name(name: str) -> bool:
    """True for a visible file name (or path) ending in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    base = name.rsplit("/", 1)[-1]
    if base.startswith("."):
        return False
    dot = base.rfind(".")
    return dot > 0 and base[dot:].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Geometry:
    """Resize the shorter side to ``resize``, then take the centre ``size`` x ``size`` crop.

    ``resize == size`` gives a plain square resize-and-crop; ImageNet's evaluation transform
    is ``Geometry(224, 256)``.
    """

    size: int
    resize: int

    def __post_init__(self) -> None:
        if self.size < 1 or self.resize < self.size:
            raise DataError(f"bad image geometry: size {self.size}, resize {self.resize}")

    @classmethod
    def square(cls, size: int) -> Geometry:
        """Shorter side to ``size``, centre crop ``size``."""
        return cls(size, size)

    @classmethod
    def imagenet(cls, size: int) -> Geometry:
        """Shorter side to ``size * 256 / 224`` (256 for 224), centre crop ``size``."""
        return cls(size, max(size, int(round(size * 256 / 224))))


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _fit(image: Image.Image, geometry: Geometry) -> Image.Image:
    """Shorter side to ``geometry.resize`` (bilinear, antialiased), then centre crop."""
    width, height = image.size
    short = geometry.resize
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), _BILINEAR)
    size = geometry.size
    if (new_w, new_h) != (size, size):
        left = int(round((new_w - size) / 2.0))
        top = int(round((new_h - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    return image


def _upright_rgb(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, then convert to RGB (transparent pixels become white)."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(source: Path | bytes, geometry: Geometry, name: str | None = None) -> np.ndarray:
    """Decode a file path or raw bytes into a uint8 (size, size, 3) RGB array.

    ``name`` is what error messages call the image (defaults to the path). Any decoding
    failure raises ``DataError("cannot decode image <name>: <reason>")``.
    """
    if name is not None:
        label = name
    else:
        label = "<in-memory image>" if isinstance(source, bytes) else str(source)
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(handle) as opened:
            opened.load()
            image = _fit(_upright_rgb(opened), geometry)
            array = np.asarray(image, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DataError(f"cannot decode image {label}: {_one_line(str(exc) or type(exc).__name__)}") from exc
    if array.shape != (geometry.size, geometry.size, 3):
        raise DataError(f"cannot decode image {label}: unexpected shape {array.shape}")
    return array
