"""Image files -> RGB PIL images, with errors that say which file is wrong and why."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vkvtrain.errors import ImageLoadError


def load_image(path: str | Path) -> Image.Image:
    """Open an image file fully (so truncated files fail here, not mid-batch) as RGB."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image {str(path)!r} does not exist; check the path.")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageLoadError(
            f"image {str(path)!r} is corrupt or not an image ({error}); re-export it as PNG or JPEG."
        ) from error
