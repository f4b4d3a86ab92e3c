"""Training/validation rows through `datasets`: a hub id, a local parquet file/folder, a save_to_disk folder,
a synthetic BLINK-style set (``synthetic://blink?n_per_subtask=4&subtasks=Counting,Jigsaw&image_size=32``) or
BLINK-style questions on real photos built from datasets with ground truth
(``blinkstyle://real?hpatches=DIR&spair=DIR&middlebury=DIR&n_per_subtask=N``, see
:mod:`vkvtrain.data.blink_style`; built once into the vkvtrain cache).

A row becomes a :class:`TrainingExample` (images, question, answer, optional task name and choices). Image
columns may hold PIL images, ``datasets.Image`` dicts, or None (BLINK's unused image_3/image_4 slots).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from torch.utils.data import Dataset

from vkvtrain.data.blink_rows import questions_to_rows
from vkvtrain.data.blink_style import cached_blink_style
from vkvtrain.data.parquet import check_parquet_files
from vkvtrain.data.synthetic_blink import synthetic_blink_questions
from vkvtrain.errors import DatasetError
from vkvtrain.images import decode_image, undecoded_image_columns

SYNTHETIC_SCHEME = "synthetic://"
BLINK_STYLE_SCHEME = "blinkstyle://"
# A recipe's BLINK revision before the user pins one: loading refuses it (see _hub).
REVISION_PLACEHOLDER = "PIN-A-BLINK-COMMIT"


@dataclass
class DataSource:
    """Where one split comes from and which columns hold what (a recipe section).

    Attributes:
        source: hub id, local path (parquet file, folder of parquet files, save_to_disk folder),
            ``synthetic://blink?n_per_subtask=N&subtasks=A,B&seed=S&image_size=P`` or
            ``blinkstyle://real?hpatches=DIR&spair=DIR&middlebury=DIR&n_per_subtask=N&seed=S&max_side=P&``
            ``exclude_blink=DIR&spair_split=trn`` (any subset of the roots; vkvtrain.data.blink_style).
        split: split name ("train", "validation"...); for synthetic sources also the id prefix.
        subset: hub config name (e.g. a BLINK subtask), if the dataset has several.
        image_columns: columns holding images, in prompt order; None cells are skipped.
        question_field: column with the prompt text shown after the images.
        answer_field: column with the target answer (loss is taken on its tokens only).
        task_field: optional column naming the task (per-task metrics); "" for none.
        choices_field: optional column with answer options (BLINK-style validation); "" for none.
        points_field: optional JSON column of marked points (synthetic BLINK ``points``); "" for none.
        limit: keep only the first ``limit`` rows.
        revision: hub revision to pin (a commit sha); the recipes' placeholder ``PIN-A-BLINK-COMMIT`` is refused
            at load time until it is replaced.
    """

    source: str
    split: str = "train"
    subset: str | None = None
    image_columns: list[str] = field(default_factory=lambda: ["image"])
    question_field: str = "question"
    answer_field: str = "answer"
    task_field: str = ""
    choices_field: str = ""
    points_field: str = ""
    limit: int | None = None
    revision: str | None = None


@dataclass
class TrainingExample:
    """One example: images (prompt order), question text, answer text, optional task and choices."""

    images: list[Image.Image]
    question: str
    answer: str
    task: str = ""
    choices: list[str] = field(default_factory=list)
    points: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def load_rows(spec: DataSource) -> Any:
    """The ``datasets.Dataset`` of one split, columns checked; raises DatasetError naming what is missing."""
    if spec.source.startswith(SYNTHETIC_SCHEME):
        dataset = _synthetic(spec)
    elif spec.source.startswith(BLINK_STYLE_SCHEME):
        dataset = _blink_style(spec)
    else:
        path = Path(spec.source).expanduser()
        dataset = _local(path, spec) if path.exists() else _hub(spec)
    check_columns(dataset.column_names, spec)
    dataset = undecoded_image_columns(dataset, spec.image_columns)  # decoded per item, with row-naming errors
    if spec.limit is not None:
        dataset = dataset.select(range(min(spec.limit, len(dataset))))
    if len(dataset) == 0:
        raise DatasetError(f"{spec.source!r} split {spec.split!r} has no rows.")
    return dataset


def check_columns(columns: list[str], spec: DataSource) -> None:
    wanted = [*spec.image_columns, spec.question_field, spec.answer_field]
    wanted += [c for c in (spec.task_field, spec.choices_field, spec.points_field) if c]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DatasetError(
            f"{spec.source!r} split {spec.split!r} lacks column(s) {missing}; it has {sorted(columns)}. "
            "Set image_columns / question_field / answer_field / task_field / choices_field in the recipe's "
            "data section to the dataset's names."
        )
    if not spec.image_columns:
        raise DatasetError("data.image_columns is empty; vkvtrain trains on prompts with images.")


def _pick_split(obj: Any, spec: DataSource) -> Any:
    if isinstance(obj, (datasets.DatasetDict, dict)):
        if spec.split not in obj:
            raise DatasetError(
                f"{spec.source!r} has no split {spec.split!r}; available: {sorted(obj)}. Set data.<part>.split."
            )
        return obj[spec.split]
    return obj


def _local(path: Path, spec: DataSource) -> Any:
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        return _pick_split(datasets.load_from_disk(str(path)), spec)
    if path.is_file() and path.suffix == ".parquet":
        check_parquet_files([path], f"data source, split {spec.split!r}")
        return datasets.load_dataset("parquet", data_files={spec.split: str(path)}, split=spec.split)
    if path.is_dir():
        split_files = sorted(path.glob(f"**/{spec.split}*.parquet")) or sorted(path.glob(f"**/{spec.split}/*.parquet"))
        if not split_files:
            available = sorted({p.stem.split("-")[0] for p in path.glob("**/*.parquet")})
            raise DatasetError(
                f"{str(path)!r} holds no parquet file for split {spec.split!r} (found splits: {available or 'none'}). "
                "Name files <split>.parquet / <split>-*.parquet, or point data.source at a save_to_disk folder."
            )
        check_parquet_files(split_files, f"data source {str(path)!r}, split {spec.split!r}")
        return datasets.load_dataset("parquet", data_files={spec.split: [str(p) for p in split_files]}, split=spec.split)
    raise DatasetError(f"{str(path)!r} is neither a parquet file nor a dataset folder.")


def _hub(spec: DataSource) -> Any:
    if spec.revision == REVISION_PLACEHOLDER:
        raise DatasetError(
            f"the revision of {spec.source!r} ({spec.subset}, split {spec.split}) is the recipe's placeholder "
            f"{REVISION_PLACEHOLDER!r}: pin the commit to validate on, e.g. data.val.revision=<40-hex sha> "
            f"(the current one: huggingface_hub.HfApi().dataset_info({spec.source!r}).sha), or set it to null to "
            "take whatever the hub serves today. BLINK's answers have changed since release, so numbers from "
            "different revisions are not comparable."
        )
    try:
        obj = datasets.load_dataset(spec.source, spec.subset, revision=spec.revision)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
        raise DatasetError(
            f"cannot load dataset {spec.source!r} (subset {spec.subset!r}): {str(err).splitlines()[0][:200].rstrip('.')}. "
            "Give an existing local path, a hub id reachable from here (unset HF_DATASETS_OFFLINE), or "
            "synthetic://blink?n_per_subtask=8."
        ) from err
    return _pick_split(obj, spec)


def _uri_options(spec: DataSource, netloc: str, known: set[str], example: str) -> dict[str, str]:
    """The ``?key=value`` options of a ``scheme://netloc?...`` source, every key checked against ``known``."""
    url = urlparse(spec.source)
    if url.netloc != netloc:
        raise DatasetError(f"unknown source {spec.source!r}; use {example}.")
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    if set(query) - known:
        raise DatasetError(f"unknown option(s) {sorted(set(query) - known)} in {spec.source!r}; known: {sorted(known)}.")
    return query


def _synthetic(spec: DataSource) -> Any:
    query = _uri_options(spec, "blink", {"n_per_subtask", "subtasks", "seed", "image_size"},
                         "synthetic://blink?n_per_subtask=N")
    questions = synthetic_blink_questions(
        n_per_subtask=int(query.get("n_per_subtask", 4)),
        seed=int(query.get("seed", 0)),
        subtasks=query["subtasks"].split(",") if "subtasks" in query else None,
        image_size=int(query.get("image_size", 64)),
        split=spec.split,
    )
    return datasets.Dataset.from_dict(questions_to_rows(questions))


def _blink_style(spec: DataSource) -> Any:
    paths = {"hpatches", "spair", "middlebury", "exclude_blink"}
    numbers = {"n_per_subtask", "seed", "max_side"}
    query = _uri_options(spec, "real", paths | numbers | {"spair_split"}, "blinkstyle://real?hpatches=DIR&spair=DIR")
    for name in sorted(paths & set(query)):
        if not Path(query[name]).expanduser().is_dir():
            raise DatasetError(
                f"{name}={query[name]!r} in {spec.source!r} is not a directory. Download the dataset in its native "
                f"layout (vkvtrain.data.blink_style.{'leakage' if name == 'exclude_blink' else name} describes it) and "
                "point the option at it, drop the option, or train on synthetic://blink?n_per_subtask=100 instead."
            )
    try:
        kwargs: dict[str, Any] = {k: int(v) if k in numbers else v for k, v in query.items()}
    except ValueError as err:
        raise DatasetError(f"{spec.source!r}: {sorted(numbers & set(query))} must be integers ({err}).") from err
    folder = cached_blink_style(split=spec.split, **kwargs)
    files = sorted(folder.glob(f"*/{spec.split}.parquet"))
    return datasets.Dataset(pa.concat_tables([pq.read_table(f) for f in files]))


def to_example(row: dict[str, Any], spec: DataSource, index: int | None = None) -> TrainingExample:
    """One dataset row -> TrainingExample (None image cells dropped); a corrupt image names its row and column."""
    where = f"{spec.source!r} split {spec.split!r} row {index}"
    fix = "fix or drop that row (e.g. Dataset.filter), or check data.image_columns"
    images = [img for c in spec.image_columns
              if (img := decode_image(row[c], f"{where}, column {c!r}", fix)) is not None]
    if not images:
        raise DatasetError(f"a row of {spec.source!r} has no image in columns {spec.image_columns}.")
    return TrainingExample(
        images=images,
        question=str(row[spec.question_field]),
        answer=str(row[spec.answer_field]),
        task=str(row[spec.task_field]) if spec.task_field else "",
        choices=list(row[spec.choices_field]) if spec.choices_field else [],
        points=json.loads(row[spec.points_field]) if spec.points_field and row[spec.points_field] else {},
    )


class ExampleDataset(Dataset[TrainingExample]):
    """Map-style dataset of TrainingExample over a ``datasets.Dataset`` (decoding happens per item)."""

    def __init__(self, spec: DataSource) -> None:
        self.spec = spec
        self.rows = load_rows(spec)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> TrainingExample:
        return to_example(self.rows[int(index)], self.spec, int(index))
