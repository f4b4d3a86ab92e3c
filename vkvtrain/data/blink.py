"""BLINK questions from the hub (BLINK-Benchmark/BLINK) or from a local folder with the same schema.

Schema (one row per question, one hub config per subtask, splits ``val`` and ``test``):
``idx`` (str, e.g. "val_Art_Style_1"), ``question`` (str), ``sub_task`` (str), ``image_1`` .. ``image_4``
(PIL images; unused slots are None), ``choices`` (list[str]), ``answer`` ("(A)", "(B)", ...; hidden on
``test``), ``prompt`` (question + "Select from the following choices." + lettered choices).
Optional: ``explanation`` (str) and ``points`` (JSON str, see :class:`BlinkQuestion`), which only the
synthetic generator writes.

Local folder layouts accepted under ``root``, one sub-folder per subtask:
``root/<Subtask>/<split>-*.parquet`` or ``root/<Subtask>/<split>.parquet`` (a hub snapshot), or
``root/<Subtask>/`` written by ``DatasetDict.save_to_disk`` (``dataset_dict.json`` inside).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image

from vkvtrain.data.parquet import check_parquet_files
from vkvtrain.errors import DatasetError
from vkvtrain.images import decode_image, undecoded_image_columns

BLINK_HUB_ID = "BLINK-Benchmark/BLINK"

BLINK_SUBTASKS: tuple[str, ...] = (
    "Art_Style",
    "Counting",
    "Forensic_Detection",
    "Functional_Correspondence",
    "IQ_Test",
    "Jigsaw",
    "Multi-view_Reasoning",
    "Object_Localization",
    "Relative_Depth",
    "Relative_Reflectance",
    "Semantic_Correspondence",
    "Spatial_Relation",
    "Visual_Correspondence",
    "Visual_Similarity",
)
BLINK_SPLITS: tuple[str, ...] = ("val", "test")
IMAGE_FIELDS: tuple[str, ...] = ("image_1", "image_2", "image_3", "image_4")
REQUIRED_FIELDS: tuple[str, ...] = ("idx", "question", "sub_task", *IMAGE_FIELDS, "choices", "answer", "prompt")
LETTERS = "ABCDEFGHIJ"

_ANSWER_RE = re.compile(r"^\s*\(?([A-J])\)?\s*$")

Point = tuple[float, float]


@dataclass
class BlinkQuestion:
    """One BLINK question.

    images: the non-empty image slots in image_1..image_4 order.
    answer: the gold letter ("A", "B", ...) or None where the split hides it.
    points: marked points, ``{"image_1": {"REF": (x, y)}, "image_2": {"A": (x, y), ...}}`` with x, y in
        [0, 1] relative to the image width/height; None when the data carries none (the hub data draws
        its points into the pixels and does not give coordinates).
    """

    idx: str
    sub_task: str
    question: str
    prompt: str
    choices: list[str]
    images: list[Image.Image]
    answer: str | None
    points: dict[str, dict[str, Point]] | None = None
    explanation: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_choices(self) -> int:
        return len(self.choices)

    @property
    def letters(self) -> str:
        return LETTERS[: self.n_choices]

    @property
    def answer_index(self) -> int | None:
        return None if self.answer is None else LETTERS.index(self.answer)


def parse_answer(raw: str | None) -> str | None:
    """``"(B)"`` -> ``"B"``; anything that is not one letter (the hidden test key) -> None."""
    if raw is None:
        return None
    m = _ANSWER_RE.match(str(raw))
    return m.group(1) if m else None


def check_subtasks(subtasks: Sequence[str] | None) -> list[str]:
    """Validate subtask names (None -> all 14)."""
    if subtasks is None:
        return list(BLINK_SUBTASKS)
    if isinstance(subtasks, str):
        subtasks = [subtasks]
    unknown = [s for s in subtasks if s not in BLINK_SUBTASKS]
    if unknown:
        raise DatasetError(
            f"unknown BLINK subtask(s) {unknown}; choose from {list(BLINK_SUBTASKS)} (names are case-sensitive)"
        )
    if not subtasks:
        raise DatasetError("empty subtask list; leave it unset (null) to evaluate all 14 BLINK subtasks")
    return list(subtasks)


def check_fields(columns: Iterable[str], where: str) -> None:
    """Raise DatasetError naming every required BLINK field missing from ``columns``."""
    have = set(columns)
    missing = [f for f in REQUIRED_FIELDS if f not in have]
    if missing:
        raise DatasetError(
            f"{where} lacks BLINK field(s) {missing}; every subtask needs {list(REQUIRED_FIELDS)} "
            "(unused image slots as null columns)"
        )


def _load_local_subtask(root: Path, subtask: str, split: str) -> Any:
    import datasets

    folder = root / subtask
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise DatasetError(
            f"subtask folder {folder} does not exist (found {found}); write one folder per subtask, "
            "e.g. with vkvtrain.data.synthetic_blink.write_synthetic_blink"
        )
    if (folder / "dataset_dict.json").exists():
        dd = datasets.load_from_disk(str(folder))
        if split not in dd:
            raise DatasetError(f"{folder} has no split {split!r} (splits: {sorted(dd)})")
        return dd[split]
    files = sorted(folder.glob(f"{split}-*.parquet")) + sorted(folder.glob(f"{split}.parquet"))
    if not files:
        others = sorted({p.name.split("-")[0].split(".")[0] for p in folder.glob("*.parquet")})
        raise DatasetError(
            f"no {split!r} split under {folder}: expected {split}.parquet or {split}-*.parquet "
            f"(splits found: {others})"
        )
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_parquet_files(files, f"BLINK subtask {subtask}, split {split!r}")
    # Reading with pyarrow avoids a datasets cache copy; the features (Image columns) come back from the
    # schema metadata that Dataset.to_parquet and the hub write.
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return datasets.Dataset(table)


def _load_hub_subtask(hub_id: str, subtask: str, split: str, revision: str | None) -> Any:
    import datasets

    try:
        return datasets.load_dataset(hub_id, name=subtask, split=split, revision=revision)
    except ValueError as e:  # datasets raises ValueError for an unknown split
        if "split" in str(e).lower():
            raise DatasetError(f"{hub_id}/{subtask} has no split {split!r}: {e}") from e
        raise DatasetError(f"cannot load {hub_id}/{subtask} split {split!r}: {e}") from e
    except Exception as e:
        raise DatasetError(
            f"cannot load {hub_id}/{subtask} split {split!r} ({type(e).__name__}: {e}); without hub access "
            "pass a local copy with --data.root DIR (one folder per subtask, parquet files)"
        ) from e


def load_blink_datasets(
    subtasks: Sequence[str] | None = None,
    split: str = "val",
    root: str | Path | None = None,
    hub_id: str = BLINK_HUB_ID,
    revision: str | None = None,
) -> dict[str, Any]:
    """Load BLINK subtasks as ``{subtask: datasets.Dataset}`` from ``root`` or the hub, fields checked."""
    names = check_subtasks(subtasks)
    if split not in BLINK_SPLITS:
        raise DatasetError(f"unknown BLINK split {split!r}; choose from {list(BLINK_SPLITS)}")
    out: dict[str, Any] = {}
    for name in names:
        if root is not None:
            root_path = Path(root)
            if not root_path.is_dir():
                raise DatasetError(f"BLINK data root {root_path} is not a directory")
            ds = _load_local_subtask(root_path, name, split)
            where = f"{root_path / name} ({split})"
        else:
            ds = _load_hub_subtask(hub_id, name, split, revision)
            where = f"{hub_id}/{name} ({split})"
        check_fields(ds.column_names, where)
        out[name] = undecoded_image_columns(ds, list(IMAGE_FIELDS))  # decoded per question, errors name it
    return out


def row_to_question(row: dict[str, Any]) -> BlinkQuestion:
    """Turn one dataset row (images decoded to PIL) into a :class:`BlinkQuestion`."""
    images = [decode_image(row[k], f"BLINK question {row.get('idx')!r}, field {k}",
                           "drop or re-download that question (data.limit / data.subtasks to skip it)")
              for k in IMAGE_FIELDS if row.get(k) is not None]
    if not images:
        raise DatasetError(f"BLINK question {row.get('idx')!r} has no image in {list(IMAGE_FIELDS)}")
    choices = list(row["choices"])
    points = None
    if row.get("points"):
        raw = json.loads(row["points"])
        points = {img: {lab: (float(xy[0]), float(xy[1])) for lab, xy in marks.items()} for img, marks in raw.items()}
    answer = parse_answer(row["answer"])
    if answer is not None and LETTERS.index(answer) >= len(choices):
        raise DatasetError(
            f"BLINK question {row['idx']!r}: answer {row['answer']!r} is not among its {len(choices)} choices"
        )
    return BlinkQuestion(
        idx=str(row["idx"]),
        sub_task=str(row["sub_task"]),
        question=str(row["question"]),
        prompt=str(row["prompt"]),
        choices=choices,
        images=[im for im in images if im is not None],
        answer=answer,
        points=points,
        explanation=str(row.get("explanation") or ""),
    )


def load_blink(
    subtasks: Sequence[str] | None = None,
    split: str = "val",
    root: str | Path | None = None,
    hub_id: str = BLINK_HUB_ID,
    revision: str | None = None,
    limit: int | None = None,
) -> list[BlinkQuestion]:
    """BLINK questions in subtask order (BLINK_SUBTASKS order), file order within a subtask.

    limit: keep at most this many questions per subtask (quick runs).
    """
    datasets_ = load_blink_datasets(subtasks, split, root, hub_id, revision)
    questions: list[BlinkQuestion] = []
    for _name, ds in datasets_.items():
        n = len(ds) if limit is None else min(limit, len(ds))
        questions.extend(row_to_question(ds[i]) for i in range(n))
    return questions
