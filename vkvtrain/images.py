"""Image files -> RGB PIL images, with errors that say which file is wrong and why."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import datasets
from PIL import Image, UnidentifiedImageError

from vkvtrain.errors import ImageLoadError


def _bomb_message(where: str, error: Image.DecompressionBombError) -> str:
    return (f"{where} is too large to decode safely ({error.args[0].split(' could be')[0]}); downscale it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file.")


def load_image(path: str | Path) -> Image.Image:
    """Open an image file fully (so truncated files fail here, not mid-batch) as RGB."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image {str(path)!r} does not exist; check the path.")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise ImageLoadError(_bomb_message(f"image {str(path)!r}", error)) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageLoadError(
            f"image {str(path)!r} is corrupt or not an image ({error}); re-export it as PNG or JPEG."
        ) from error


def decode_image(
    value: Any, where: str, fix: str = "fix or drop that row (e.g. with Dataset.filter)"
) -> Image.Image | None:
    """One dataset image cell -> RGB PIL image, fully decoded; None stays None.

    Accepts PIL images and ``datasets.Image`` cells read with ``decode=False`` (``{"bytes", "path"}``), so a
    corrupt image fails here naming ``where`` (e.g. "train.parquet row 12, column 'image_1'") and ``fix``.
    """
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        try:
            with Image.open(source) as image:
                image.load()
                return image.convert("RGB")
        except Image.DecompressionBombError as error:
            raise ImageLoadError(f"{_bomb_message(where, error)} ({fix})") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ImageLoadError(f"{where}: the image is corrupt or unreadable ({error}); {fix}.") from error
    raise ImageLoadError(f"{where}: holds {type(value).__name__}, not an image; {fix}.")


def undecoded_image_columns(dataset: Any, columns: list[str]) -> Any:
    """``dataset`` with its ``datasets.Image`` columns among ``columns`` left undecoded, for :func:`decode_image`."""
    for column in columns:
        feature = dataset.features.get(column)
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset
