"""Parquet files checked before a dataset library reads them: each must be parquet, and together they must
hold rows (a footer read each, no data). Errors name the file and the fix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vkvtrain.errors import DatasetError


def check_parquet_files(files: Sequence[Path], what: str, allow_empty: bool = False) -> int:
    """The total row count of ``files``; DatasetError for a file that is not parquet, or when there are no rows
    (unless ``allow_empty``: the caller reports an empty source its own way)."""
    total = 0
    for file in files:
        try:
            total += pq.read_metadata(file).num_rows
        except (pa.ArrowInvalid, OSError) as error:
            raise DatasetError(
                f"{str(file)!r} ({what}) is not a readable parquet file ({str(error).splitlines()[0]}); "
                "remove it from the folder or re-export it with Dataset.to_parquet."
            ) from None
    if total == 0 and not allow_empty:
        names = ", ".join(repr(str(f)) for f in files)
        raise DatasetError(f"{what} has no rows: {names} hold 0 rows; point it at parquet files with data.")
    return total
