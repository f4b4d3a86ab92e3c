"""Subprocess script for tests/test_train_ddp.py: fit a learned prefix on answers of different lengths, with
``--devices 1`` (global batch 4) or ``--devices 2`` (DDP, 2 x 2), and save the trained tensors.

    python tests/helpers_train_ddp.py DATA_DIR OUT.pt --devices 2 [--per_process_mean]

``--per_process_mean`` is the control: each process normalises by its own answer-token count (the objective
DDP used to train), which must NOT match the single-process run.
"""

from __future__ import annotations

import argparse
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import lightning as L  # noqa: E402
import torch  # noqa: E402

from vkvtrain.data.training import DataSource  # noqa: E402
from vkvtrain.datamodule import VKVDataModule  # noqa: E402
from vkvtrain.interventions import LearnedPrefix  # noqa: E402
from vkvtrain.module import VKVModule  # noqa: E402


def write_data(folder: str) -> None:
    """8 rows with one image each and answers of 1 to 40 characters, saved with save_to_disk."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(8)]
    answers = ["y", "a much longer answer with many tokens in it", "no", "blue and red",
               "z", "the second one, on the left side", "ok", "three"]
    datasets.Dataset.from_dict({"image": images, "question": [f"q{i}?" for i in range(8)], "answer": answers},
                               features=datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                                           "answer": datasets.Value("string")})
                               ).save_to_disk(folder)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--per_process_mean", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.per_process_mean:
        VKVModule._answer_loss = lambda self, forward: forward.loss  # type: ignore[method-assign]
    L.seed_everything(0)
    module = VKVModule(interventions=[LearnedPrefix(num_tokens=2)], learning_rate=0.05)
    data = VKVDataModule(train=DataSource(source=args.data, split="train"), batch_size=4 // args.devices,
                         shuffle=False)
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
                        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, data)
    if trainer.global_rank == 0:
        torch.save(module.state_dict(), args.out)


if __name__ == "__main__":
    main()
