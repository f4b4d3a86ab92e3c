"""BlinkQuestions -> rows in the hub schema (plus ``points``), and parquet files that the BLINK loader and
``fit`` read back (``<root>/<Subtask>/<split>.parquet``, the layout of :func:`vkvtrain.data.blink.load_blink`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import datasets
import pyarrow.parquet as pq
from PIL import Image

from vkvtrain.data.blink import IMAGE_FIELDS, BlinkQuestion

ImageFormat = Literal["png", "jpeg"]


def blink_features() -> Any:
    """``datasets.Features`` of the hub schema plus ``explanation`` and ``points`` (JSON string)."""
    return datasets.Features(
        {
            "idx": datasets.Value("string"),
            "question": datasets.Value("string"),
            "sub_task": datasets.Value("string"),
            **{k: datasets.Image() for k in IMAGE_FIELDS},
            "choices": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "explanation": datasets.Value("string"),
            "points": datasets.Value("string"),
        }
    )


def _encoded(image: Image.Image, image_format: ImageFormat | None) -> Any:
    """The cell for an image column: the PIL image (datasets stores PNG) or JPEG bytes (quality 95)."""
    if image_format in (None, "png"):
        return image
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return {"bytes": buffer.getvalue(), "path": None}


def questions_to_rows(questions: Sequence[BlinkQuestion], image_format: ImageFormat | None = None
                      ) -> dict[str, list[Any]]:
    """Column dict in the hub schema (+ ``points`` as JSON) for ``datasets.Dataset.from_dict``."""
    cols: dict[str, list[Any]] = {k: [] for k in blink_features()}
    for q in questions:
        cols["idx"].append(q.idx)
        cols["question"].append(q.question)
        cols["sub_task"].append(q.sub_task)
        for j, k in enumerate(IMAGE_FIELDS):
            cols[k].append(_encoded(q.images[j], image_format) if j < len(q.images) else None)
        cols["choices"].append(list(q.choices))
        cols["answer"].append(f"({q.answer})" if q.answer else "hidden")
        cols["prompt"].append(q.prompt)
        cols["explanation"].append(q.explanation)
        cols["points"].append(json.dumps(q.points) if q.points else "")
    return cols


def write_questions(path: str | Path, questions: Iterable[BlinkQuestion], image_format: ImageFormat | None = None,
                    chunk: int = 64) -> int:
    """Stream ``questions`` into one parquet file (features in its schema metadata); returns the row count.

    Memory stays at ``chunk`` questions; nothing is written (and 0 returned) when there are none.
    """
    path = Path(path)
    writer = None
    n = 0
    batch: list[BlinkQuestion] = []

    def flush() -> None:
        nonlocal writer
        table = datasets.Dataset.from_dict(questions_to_rows(batch, image_format), features=blink_features()).data.table
        if writer is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(str(path), table.schema)
        writer.write_table(table)
        batch.clear()

    try:
        for q in questions:
            batch.append(q)
            n += 1
            if len(batch) == chunk:
                flush()
        if batch:
            flush()
    finally:
        if writer is not None:
            writer.close()
    return n
