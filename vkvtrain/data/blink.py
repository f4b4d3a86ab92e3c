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

Every question is keyed on the subtask it was loaded from (the hub config or folder name), never on the
row's free-text ``sub_task`` field. On ``val`` every gold answer must be one of the question's letters and
every subtask must hold questions: a malformed answer ("(Z)", "") or an empty subtask is an error naming it,
unless the caller opts into skipping, in which case each skip is listed (:class:`BlinkLoad.skipped`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
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


class LetteredChoices:
    """Lettered multiple choice over ``self.choices`` with a gold letter ``self.answer`` (or None)."""

    choices: list[str]
    answer: str | None

    @property
    def n_choices(self) -> int:
        return len(self.choices)

    @property
    def letters(self) -> str:
        return LETTERS[: self.n_choices]

    @property
    def answer_index(self) -> int | None:
        return None if self.answer is None else LETTERS.index(self.answer)


@dataclass
class BlinkQuestion(LetteredChoices):
    """One BLINK question.

    images: the non-empty image slots in image_1..image_4 order.
    answer: the gold letter ("A", "B", ...) or None where the split hides it.
    points: marked points, ``{"image_1": {"REF": (x, y)}, "image_2": {"A": (x, y), ...}}`` with x, y in
        [0, 1] relative to the image width/height; None when the data carries none (the hub data draws
        its points into the pixels and does not give coordinates).
    """

    idx: str
    sub_task: str  # the subtask it was loaded from (config / folder name)
    question: str
    prompt: str
    choices: list[str]
    images: list[Image.Image]
    answer: str | None
    points: dict[str, dict[str, Point]] | None = None
    explanation: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return len(self.images)


def parse_answer(raw: str | None) -> str | None:
    """``"(B)"`` -> ``"B"``; anything that is not one letter (the hidden test key) -> None."""
    if raw is None:
        return None
    m = _ANSWER_RE.match(str(raw))
    return m.group(1) if m else None


def check_subtasks(subtasks: Sequence[str] | None, local: bool = False) -> list[str]:
    """Validate subtask names (None -> all 14). ``local``: a local folder may hold BLINK-format question sets of
    other names (one sub-folder each, e.g. a model organism's taught questions); only BLINK's own are checked."""
    if subtasks is None:
        return list(BLINK_SUBTASKS)
    if isinstance(subtasks, str):
        subtasks = [subtasks]
    unknown = [s for s in subtasks if s not in BLINK_SUBTASKS]
    if unknown and not local:
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
    # an empty subtask is reported by read_blink (an error naming it, or an opt-in skip)
    check_parquet_files(files, f"BLINK subtask {subtask}, split {split!r}", allow_empty=True)
    # Reading with pyarrow avoids a datasets cache copy; the features (Image columns) come back from the
    # schema metadata that Dataset.to_parquet and the hub write.
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return datasets.Dataset(table)


def _load_hub_subtask(hub_id: str, subtask: str, split: str, revision: str | None) -> Any:
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
    names = check_subtasks(subtasks, local=root is not None)
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


class MalformedQuestionError(DatasetError):
    """A BLINK row whose gold answer cannot be scored."""


def gold_answer(row: dict[str, Any], subtask: str, split: str) -> str | None:
    """The gold letter of ``row``; None only where the split hides its answers (``test``).

    On ``val`` an answer that is not one of the question's letters ("(Z)", "", "(E)" with 4 choices)
    raises :class:`MalformedQuestionError` naming the question.
    """
    raw = row.get("answer")
    answer = parse_answer(raw)
    n = len(row["choices"])
    if answer is not None and LETTERS.index(answer) < n:
        return answer
    if answer is None and split == "test":
        return None  # the hidden test key
    raise MalformedQuestionError(
        f"BLINK question {row.get('idx')!r} ({subtask}, {split}): gold answer {raw!r} is not one of its {n} "
        f"choices {', '.join(f'({c})' for c in LETTERS[:n])}; fix that row, or set data.skip_malformed: true "
        "to skip it (results.json then lists it under skipped)"
    )


def row_to_question(row: dict[str, Any], subtask: str | None = None, split: str = "val") -> BlinkQuestion:
    """Turn one dataset row (images decoded to PIL) into a :class:`BlinkQuestion`.

    subtask: the subtask the row was loaded from (the key results use); None = the row's ``sub_task`` text.
    split: ``val`` requires a gold letter among the choices, ``test`` allows a hidden answer.
    """
    name = str(row["sub_task"]) if subtask is None else subtask
    answer = gold_answer(row, name, split)
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
    return BlinkQuestion(
        idx=str(row["idx"]),
        sub_task=name,
        question=str(row["question"]),
        prompt=str(row["prompt"]),
        choices=choices,
        images=[im for im in images if im is not None],
        answer=answer,
        points=points,
        explanation=str(row.get("explanation") or ""),
        meta={"sub_task_field": str(row["sub_task"])},
    )


@dataclass
class BlinkLoad:
    """What :func:`read_blink` loaded.

    questions: in subtask order, file order within a subtask. subtasks: the subtasks that hold questions.
    source: what was read, for results.json: the hub id with the requested and (when the datasets cache
        names it) resolved revision, or the local files with a sha256 of their bytes.
    skipped: with ``skip_malformed``, one ``{"subtask", "idx", "reason"}`` per skipped question or empty
        subtask (``idx`` None), so results can list them; empty otherwise.
    """

    questions: list[BlinkQuestion]
    subtasks: list[str]
    source: dict[str, Any]
    skipped: list[dict[str, Any]] = field(default_factory=list)


_SHA = re.compile(r"^[0-9a-f]{40}$")


def hub_commit(dataset: Any) -> str | None:
    """The hub commit a cached hub dataset was built from: the datasets cache folder
    ``<name>/<config>/<version>/<commit sha>/`` holding its arrow files; None when that is not visible."""
    for entry in getattr(dataset, "cache_files", None) or []:
        parent = Path(str(entry.get("filename", ""))).parent.name
        if _SHA.match(parent):
            return parent
    return None


def _files_digest(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def local_files(root: Path, subtask: str, split: str) -> list[Path]:
    """The files a local subtask folder is read from (parquet files, or a save_to_disk folder's files)."""
    folder = root / subtask
    if (folder / "dataset_dict.json").exists():
        return sorted(p for p in (folder / split).rglob("*") if p.is_file())
    return sorted(folder.glob(f"{split}-*.parquet")) + sorted(folder.glob(f"{split}.parquet"))


def read_blink(
    subtasks: Sequence[str] | None = None,
    split: str = "val",
    root: str | Path | None = None,
    hub_id: str = BLINK_HUB_ID,
    revision: str | None = None,
    limit: int | None = None,
    skip_malformed: bool = False,
) -> BlinkLoad:
    """Load BLINK questions with a record of where they came from.

    limit: keep at most this many questions per subtask (quick runs). skip_malformed: skip (and list)
    questions whose gold answer is malformed and subtasks without questions, instead of raising.
    """
    if limit is not None and limit < 1:
        raise DatasetError(f"data.limit must be >= 1 or null (all questions), got {limit}")
    datasets_ = load_blink_datasets(subtasks, split, root, hub_id, revision)
    questions: list[BlinkQuestion] = []
    loaded: list[str] = []
    skipped: list[dict[str, Any]] = []
    for name, ds in datasets_.items():
        n = len(ds) if limit is None else min(limit, len(ds))
        kept = 0
        for i in range(n):
            try:
                questions.append(row_to_question(ds[i], name, split))
                kept += 1
            except MalformedQuestionError as error:
                if not skip_malformed:
                    raise
                skipped.append({"subtask": name, "idx": str(ds[i]["idx"]), "reason": str(error)})
        if kept:
            loaded.append(name)
            continue
        reason = (f"BLINK subtask {name} ({split}) holds no {'well-formed ' if n else ''}questions, so the "
                  "macro average would silently leave it out; fix or re-download it, drop it from data.subtasks, "
                  "or set data.skip_malformed: true to skip it (results.json then lists it under skipped)")
        if not skip_malformed:
            raise DatasetError(reason)
        skipped.append({"subtask": name, "idx": None, "reason": reason})
    if root is not None:
        files = [f for name in datasets_ for f in local_files(Path(root), name, split)]
        source: dict[str, Any] = {"source": "local", "root": str(root), "split": split,
                                  "files": [str(f.relative_to(root)) for f in files],
                                  "revision": f"sha256:{_files_digest(files)}"}
    else:
        commits = {hub_commit(ds) for ds in datasets_.values()}
        resolved = commits.pop() if len(commits) == 1 else None
        source = {"source": "hub", "hub_id": hub_id, "split": split, "revision_requested": revision,
                  "revision": resolved or revision or "unpinned (the hub's latest at load time)"}
    return BlinkLoad(questions, loaded, source, skipped)


def load_blink(
    subtasks: Sequence[str] | None = None,
    split: str = "val",
    root: str | Path | None = None,
    hub_id: str = BLINK_HUB_ID,
    revision: str | None = None,
    limit: int | None = None,
) -> list[BlinkQuestion]:
    """BLINK questions in subtask order (BLINK_SUBTASKS order), file order within a subtask.

    limit: keep at most this many questions per subtask (quick runs). Strict: see :func:`read_blink`.
    """
    return read_blink(subtasks, split, root, hub_id, revision, limit).questions
