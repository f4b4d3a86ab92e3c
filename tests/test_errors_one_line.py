"""Bad data and images end a command in one line on stderr (exit 2), never a traceback: decompression bombs,
images a family's processor refuses, parquet files with no rows or that are not parquet, and data errors raised
inside DataLoader worker processes."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers_train import tiny_recipe
from vkvtrain.cli import main
from vkvtrain.data.synthetic_blink import write_synthetic_blink
from vkvtrain.errors import ImageLoadError
from vkvtrain.images import decode_image

ROOT = Path(__file__).resolve().parents[1]
EVAL = [str(ROOT / "eval" / "blink.yaml"), "--model", "tiny://llava_onevision", "--progress", "false",
        "--probes.enabled", "false"]
FIT = ["--trainer.logger=false", "--model.probe_tasks=null", "trainer.max_steps=1", "trainer.val_check_interval=1",
       "trainer.limit_val_batches=1"]


def _last_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"vkvtrain {command}: "), err
    return last


def test_decompression_bomb_is_refused_in_one_line(tmp_path, capsys, monkeypatch) -> None:
    image = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2 x the limit: Pillow's bomb error
    assert main(["kv", "tiny://llava_onevision", "--image", str(image), "--out", str(tmp_path / "kv.st")]) == 2
    assert "too large to decode safely" in _last_line(capsys, "kv") and not (tmp_path / "kv.st").exists()
    with pytest.raises(ImageLoadError, match="row 3, column 'image_1' is too large"):
        decode_image({"bytes": image.read_bytes(), "path": None}, "train.parquet row 3, column 'image_1'")


def test_aspect_ratio_a_processor_refuses_is_one_line(tmp_path, capsys) -> None:
    image = tmp_path / "strip.png"
    Image.new("RGB", (1000, 4)).save(image)  # 250:1, Qwen2.5-VL's processor allows < 200:1
    assert main(["kv", "tiny://qwen2_5_vl", "--image", str(image), "--out", str(tmp_path / "kv.st")]) == 2
    last = _last_line(capsys, "kv")
    assert "aspect ratio" in last and "1000x4" in last and not (tmp_path / "kv.st").exists()


@pytest.fixture
def blink_root(tmp_path) -> Path:
    return write_synthetic_blink(tmp_path / "blink", 1, subtasks=["Counting"], image_size=16, split="val")


def test_empty_and_foreign_parquet_files_in_a_blink_folder(tmp_path, capsys, blink_root) -> None:
    table = pq.read_table(blink_root / "Counting" / "val.parquet")
    pq.write_table(table.slice(0, 0), blink_root / "Counting" / "val.parquet")
    args = [*EVAL, "--data.root", str(blink_root), "--data.subtasks", "[Counting]", "--output_dir", str(tmp_path / "o")]
    assert main(["evaluate", *args]) == 2
    # the empty subtask is named with its fix (or data.skip_malformed), in one line
    assert "BLINK subtask Counting (val) holds no questions" in _last_line(capsys, "evaluate")
    pq.write_table(table, blink_root / "Counting" / "val.parquet")
    (blink_root / "Counting" / "val-00001.parquet").write_text("notes, not a parquet file\n")
    assert main(["evaluate", *args]) == 2
    last = _last_line(capsys, "evaluate")
    assert "val-00001.parquet" in last and "not a readable parquet file" in last




def test_empty_and_foreign_training_parquet(tmp_path, capsys, blink_root) -> None:
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(blink_root / "Counting" / "val.parquet").slice(0, 0), empty)
    assert main(["fit", str(tiny_recipe(tmp_path)), *FIT, f"--data.train.source={empty}"]) == 2
    assert "has no rows" in _last_line(capsys, "fit")
    assert not list((tmp_path / "run").iterdir())  # the refused run left no (empty) run folder
    foreign = tmp_path / "train.parquet"
    foreign.write_text("a,b\n1,2\n")
    assert main(["fit", str(tiny_recipe(tmp_path)), *FIT, f"--data.train.source={foreign}"]) == 2
    assert "not a readable parquet file" in _last_line(capsys, "fit")


def test_data_error_inside_a_dataloader_worker_is_one_line(tmp_path, capsys) -> None:
    root = write_synthetic_blink(tmp_path / "blink", 4, subtasks=["Counting"], image_size=16, split="train")
    table = pq.read_table(root / "Counting" / "train.parquet")
    column = table.column("image_1").to_pylist()
    column[1] = {"bytes": b"\x89PNG\r\n\x1a\n" + b"\x00" * 16, "path": None}
    index = table.schema.get_field_index("image_1")
    pq.write_table(table.set_column(index, table.schema.field(index), pa.array(column, table.schema.field(index).type)),
                   tmp_path / "train.parquet")
    argv = ["fit", str(tiny_recipe(tmp_path)), *FIT, f"--data.train.source={tmp_path / 'train.parquet'}",
            "data.num_workers=1", "data.shuffle=false", "data.batch_size=2"]
    assert main(argv) == 2
    last = _last_line(capsys, "fit")
    assert "corrupt or unreadable" in last and last.endswith("(in DataLoader worker process 0)")
