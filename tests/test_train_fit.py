"""End-to-end fits of a few steps on tiny models: learning, checkpoints, resume, NaN stop, data errors."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from helpers_train import InfGradAt, NaNAfter, blink_source
from vkvtrain import Prompt, load_mlm
from vkvtrain.checkpointing import restore_into
from vkvtrain.data.training import DataSource, load_rows
from vkvtrain.datamodule import VKVDataModule
from vkvtrain.errors import DatasetError, NonFiniteLossError
from vkvtrain.interventions import LateLoRA, LearnedPrefix
from vkvtrain.module import VKVModule


def _data(batch_size: int = 2) -> VKVDataModule:
    return VKVDataModule(train=blink_source("train", n=8), val=blink_source("val", n=2), batch_size=batch_size)


def _trainer(tmp_path: Path, max_steps: int, every: int | None = None, **kwargs) -> L.Trainer:
    callbacks = [ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=every, save_top_k=-1,
                                 save_last=True)] if every else []
    return L.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=bool(every), callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=2,
        val_check_interval=max_steps, default_root_dir=tmp_path, **kwargs,
    )


def test_prefix_fit_lowers_val_loss_and_changes_only_prefix(tmp_path) -> None:
    L.seed_everything(0)
    baseline = VKVModule(model="tiny://llava_onevision")
    base_loss = _trainer(tmp_path, 1).validate(baseline, _data(), verbose=False)[0]["val/loss"]
    module = VKVModule(model="tiny://llava_onevision", interventions=[LearnedPrefix(num_tokens=4)], learning_rate=0.1)
    module.configure_model()
    frozen = {k: v.clone() for k, v in module.mlm.model.state_dict().items()}
    start = module.interventions[0].vectors.detach().clone()
    trainer = _trainer(tmp_path, 8)
    trainer.fit(module, _data())
    fitted_loss = float(trainer.callback_metrics["val/loss"])
    assert fitted_loss < base_loss - 0.05
    assert not torch.equal(module.interventions[0].vectors.detach(), start)
    assert all(torch.equal(frozen[k], v) for k, v in module.mlm.model.state_dict().items())
    assert module.mlm.model.training  # put in train mode when fitting


@pytest.mark.parametrize("with_prefix", [True, False])
def test_gradient_checkpointing_trains_the_same_parameters_to_the_same_values(tmp_path, with_prefix) -> None:
    """The real recipes turn gradient checkpointing on: prefix, LoRA and the key loss must still get exactly
    their gradients (a frozen-input reentrant checkpoint would silently drop the LoRA ones), also without a
    prefix, when no input of the checkpointed layers requires grad."""
    from vkvtrain.interventions import KeyArtifactSuppression

    trained = []
    for checkpointing in (False, True):
        L.seed_everything(0)
        prefix = [LearnedPrefix(num_tokens=2)] if with_prefix else []
        module = VKVModule(
            interventions=[*prefix, LateLoRA(layers=[-2, -1], rank=2, projections=["k", "v"]),
                           KeyArtifactSuppression(layers=[-1], weight=1.0)],
            learning_rate=0.05, gradient_checkpointing=checkpointing,
        )
        _trainer(tmp_path / str(checkpointing), 2).fit(module, _data(batch_size=4))
        trained.append({k: v.detach().clone() for k, v in module.state_dict().items()})
    plain, checkpointed = trained
    assert plain.keys() == checkpointed.keys() and len(plain) > 2
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    L.seed_everything(0)
    untrained = VKVModule(interventions=[*([LearnedPrefix(num_tokens=2)] if with_prefix else []),
                                         LateLoRA(layers=[-2, -1], rank=2, projections=["k", "v"])])
    untrained.configure_model()
    moved = [n for n, v in untrained.state_dict().items() if not torch.equal(v, plain[n])]
    assert any("lora_B" in n for n in moved) and (any("vectors" in n for n in moved) or not with_prefix)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "llava_next"])
def test_checkpointed_training_builds_no_graph_through_the_frozen_vision_tower(family, make_image) -> None:
    module = VKVModule(model=f"tiny://{family}", gradient_checkpointing=True,
                       interventions=[LearnedPrefix(num_tokens=2), LateLoRA(layers=[-1], rank=2)])
    module.configure_model()
    mlm = module.mlm
    mlm.model.train()
    seen: list[bool] = []
    vision = mlm.model.get_submodule(mlm.adapter.vision_modules[0])
    handle = vision.register_forward_hook(lambda _m, _i, out: seen.append(out[0].requires_grad))
    batch = mlm.encode([Prompt([make_image(32, 32, 1)], "Q?", prefix=module.intervention_list[0].prompt_prefix(),
                               answer="yes")])
    loss = mlm.model(**batch.inputs).loss
    handle.remove()
    loss.backward()
    assert seen == [False]  # the tower ran without a graph ...
    assert module.intervention_list[0].vectors.grad.abs().sum() > 0  # ... and the prefix still trains


def test_checkpoint_is_small_and_restores_into_fresh_mlm(tmp_path) -> None:
    L.seed_everything(0)
    module = VKVModule(interventions=[LearnedPrefix(num_tokens=2), LateLoRA(layers=[-1], rank=2)], learning_rate=0.05)
    _trainer(tmp_path, 2, every=2).fit(module, _data())
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    raw = torch.load(ckpt, weights_only=True)
    model_bytes = sum(p.numel() * p.element_size() for p in module.mlm.model.parameters())
    trained_bytes = sum(v.numel() * v.element_size() for v in raw["state_dict"].values())
    assert set(raw["state_dict"]) == set(module.state_dict())
    assert trained_bytes * 20 < model_bytes
    assert [s["class_path"].rsplit(".", 1)[1] for s in raw["vkvtrain"]["interventions"]] == ["LearnedPrefix", "LateLoRA"]

    fresh = load_mlm("tiny://llava_onevision")
    restored = restore_into(fresh, ckpt)
    collate = module.collator()
    batch = collate([module.trainer.datamodule.val_set[0]])
    module.mlm.model.eval()
    with torch.no_grad():
        expected = module.mlm.model(**batch.inputs).logits
        got = fresh.model(**batch.inputs).logits
    torch.testing.assert_close(got, expected)
    assert restored[0].prompt_prefix() == LearnedPrefix(num_tokens=2).prompt_prefix()
    adapter = Path(module.trainer.log_dir or module.trainer.default_root_dir) / "peft_adapter_1"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()


def test_resume_mid_epoch_equals_uninterrupted(tmp_path, monkeypatch) -> None:
    def run(root: Path, steps: int, ckpt: Path | None = None) -> tuple[VKVModule, L.Trainer]:
        L.seed_everything(0)
        module = VKVModule(interventions=[LearnedPrefix(num_tokens=2)], learning_rate=0.05)
        trainer = _trainer(root, steps, every=2)
        trainer.fit(module, _data(), ckpt_path=ckpt)
        return module, trainer

    full, full_trainer = run(tmp_path / "a", 6)  # 8 batches per epoch: step 2 is mid-epoch
    run(tmp_path / "b", 2)  # the "killed" run: its last checkpoint is at step 2
    resumed, resumed_trainer = run(tmp_path / "c", 6, ckpt=tmp_path / "b" / "ckpt" / "last.ckpt")
    assert resumed_trainer.global_step == full_trainer.global_step == 6
    torch.testing.assert_close(resumed.state_dict(), full.state_dict(), rtol=0, atol=0)
    assert float(resumed_trainer.callback_metrics["val/loss"]) == float(full_trainer.callback_metrics["val/loss"])
    # control: a loader that forgets its position re-reads the epoch's first batches and ends elsewhere
    from vkvtrain.datamodule import ResumableDataLoader

    monkeypatch.setattr(ResumableDataLoader, "load_state_dict", lambda self, state: None)
    naive, _ = run(tmp_path / "d", 6, ckpt=tmp_path / "b" / "ckpt" / "last.ckpt")
    assert not torch.equal(naive.state_dict()["interventions.0.vectors"], full.state_dict()["interventions.0.vectors"])


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path) -> None:
    module = VKVModule(interventions=[LearnedPrefix(num_tokens=2), NaNAfter(step=2)], learning_rate=0.05)
    last = tmp_path / "ckpt" / "last.ckpt"
    with pytest.raises(NonFiniteLossError, match=rf"global step 2.*last good checkpoint is {re.escape(str(last))}"):
        _trainer(tmp_path, 6, every=1).fit(module, _data())
    kept = torch.load(last, weights_only=True)
    assert kept["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values())


def test_nonfinite_parameters_after_a_step_are_never_checkpointed(tmp_path) -> None:
    """A finite loss whose step makes a tensor inf/NaN: the run stops at that step, before the checkpoint of
    that step is written; every checkpoint on disk is finite and the message names one that exists."""
    module = VKVModule(interventions=[LearnedPrefix(num_tokens=2), InfGradAt(step=2)], learning_rate=0.05)
    with pytest.raises(NonFiniteLossError, match=r"interventions\.1\.scale.*non-finite at global step 2") as error:
        _trainer(tmp_path, 6, every=1).fit(module, _data())
    named = Path(re.search(r"--ckpt_path (\S+)\.$", str(error.value)).group(1))
    assert named.is_file()
    saved = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert saved and max(torch.load(p, weights_only=True)["global_step"] for p in saved) == 2
    for path in saved:
        assert all(torch.isfinite(v).all() for v in torch.load(path, weights_only=True)["state_dict"].values())


def test_nan_before_any_checkpoint_says_none_exists(tmp_path) -> None:
    module = VKVModule(interventions=[LearnedPrefix(num_tokens=2), NaNAfter(step=0)], learning_rate=0.05)
    with pytest.raises(NonFiniteLossError, match="No checkpoint was written before this step"):
        _trainer(tmp_path, 3, every=2).fit(module, _data())


def test_changed_learning_rate_on_resume_is_applied(tmp_path, capsys) -> None:
    """Resuming with a lower model.learning_rate (as the NaN message advises) trains with it, not with the
    rate stored in the checkpoint's optimizer state."""
    L.seed_everything(0)
    _trainer(tmp_path / "a", 2, every=2).fit(
        VKVModule(interventions=[LearnedPrefix(num_tokens=2)], learning_rate=0.05), _data())
    ckpt = tmp_path / "a" / "ckpt" / "last.ckpt"
    resumed = VKVModule(interventions=[LearnedPrefix(num_tokens=2)], learning_rate=0.001)
    trainer = _trainer(tmp_path / "b", 3)
    trainer.fit(resumed, _data(), ckpt_path=ckpt)
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == [0.001]
    assert "model.learning_rate 0.001 applied (the checkpoint's optimizer had 0.05)" in capsys.readouterr().err


def test_missing_split_and_column_errors(tmp_path) -> None:
    import datasets

    folder = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"], "image": [None]})}
                         ).save_to_disk(str(folder))
    with pytest.raises(DatasetError, match=r"no split 'validation'; available: \['train'\]"):
        load_rows(DataSource(source=str(folder), split="validation"))
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['picture'\]"):
        load_rows(DataSource(source=str(folder), split="train", image_columns=["picture"]))
    with pytest.raises(DatasetError, match="no parquet file for split 'test'"):
        (tmp_path / "pq").mkdir()
        datasets.Dataset.from_dict({"x": [1]}).to_parquet(str(tmp_path / "pq" / "train.parquet"))
        load_rows(DataSource(source=str(tmp_path / "pq"), split="test"))
    rows = load_rows(blink_source("train", n=1, subtasks="Counting"))
    assert len(rows) == 1 and rows[0]["answer"].startswith("(")


def test_corrupt_image_row_names_row_and_column(tmp_path) -> None:
    import io

    import datasets
    from PIL import Image

    from vkvtrain.data.training import ExampleDataset
    from vkvtrain.errors import ImageLoadError

    good = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(good, format="PNG")
    truncated = good.getvalue()[: len(good.getvalue()) // 2]  # a PNG cut short: opens, fails when decoded
    images = [{"bytes": good.getvalue(), "path": None}, {"bytes": truncated, "path": None}]
    data = datasets.Dataset.from_dict({"image": images, "question": ["q", "q"], "answer": ["a", "a"]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "question": datasets.Value("string"),
                                                                  "answer": datasets.Value("string")}))
    data.to_parquet(str(tmp_path / "train.parquet"))
    rows = ExampleDataset(DataSource(source=str(tmp_path / "train.parquet"), split="train"))
    assert rows[0].images[0].size == (64, 64) and rows[0].images[0].tobytes() == Image.open(good).convert("RGB").tobytes()
    with pytest.raises(ImageLoadError, match=r"row 1, column 'image': the image is corrupt .*drop that row"):
        rows[1]


def test_answer_window_loss_equals_transformers_loss(tiny_mlm, family) -> None:
    from vkvtrain.data.collate import TrainingCollator
    from vkvtrain.data.training import ExampleDataset
    from vkvtrain.answer_loss import answer_forward, output_correct

    mlm = tiny_mlm(family)
    rows = ExampleDataset(blink_source("val", n=1))
    batch = TrainingCollator(mlm)([rows[0], rows[1]])  # different lengths: left padding differs per row
    with torch.no_grad():
        full = mlm.model(**batch.inputs)
        forward = answer_forward(mlm.model, batch.inputs)
    out, loss, window = forward.output, forward.loss, forward.targets
    torch.testing.assert_close(loss, full.loss, rtol=1e-5, atol=1e-5)
    assert int(forward.n_tokens) == int((batch.inputs["labels"] != -100).sum())
    labels = batch.inputs["labels"]
    assert torch.equal(output_correct(out.logits[:, :-1], window), output_correct(full.logits[:, :-1], labels[:, 1:]))
    assert out.logits.shape[1] < full.logits.shape[1] // 4
