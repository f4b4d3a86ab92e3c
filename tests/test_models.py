"""load_mlm: family detection, tiny checkpoints, clear errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config

from vkvtrain import load_mlm
from vkvtrain.cli import main as cli_main
from vkvtrain.errors import ModelLoadError, UnsupportedModelError
from vkvtrain.models.tiny import build_tiny

MODEL_CLASSES = {
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
}


def test_tiny_is_the_real_class_with_its_own_processor(tiny_mlm, family):
    mlm = tiny_mlm(family)
    assert type(mlm.model).__name__ == MODEL_CLASSES[family]
    assert mlm.family == family
    assert not mlm.model.training  # from_pretrained returns eval mode
    assert mlm.num_layers == len(mlm.decoder_layers())
    assert mlm.kv_dim == mlm.decoder_layers()[0].self_attn.k_proj.out_features
    assert mlm.tokenizer.padding_side == "left"
    assert mlm.processor.chat_template


def test_local_folder_loads_and_matches_tiny(tmp_path, family):
    folder = build_tiny(family, tmp_path / family)
    from_folder = load_mlm(str(folder))
    from_tiny = load_mlm(f"tiny://{family}")
    assert from_folder.family == family
    for (name, a), (_, b) in zip(from_folder.model.state_dict().items(), from_tiny.model.state_dict().items()):
        assert torch.equal(a, b), name


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_tiny_build_is_byte_identical(tmp_path):
    first = build_tiny("qwen2_5_vl", tmp_path / "a")
    second = build_tiny("qwen2_5_vl", tmp_path / "b")
    assert _digest(first) == _digest(second)


def test_unknown_family_lists_supported(tmp_path):
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError) as error:
        load_mlm(str(tmp_path))
    message = str(error.value)
    assert "gpt2" in message
    for supported in MODEL_CLASSES.values():
        assert supported in message


def test_unknown_tiny_family_and_missing_folder():
    with pytest.raises(UnsupportedModelError, match="tiny://qwen2_5_vl"):
        load_mlm("tiny://gpt2")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_mlm("/nonexistent/model/folder")


def test_trust_remote_code_is_off_by_default(monkeypatch, tmp_path):
    seen: list = []
    import transformers

    original = transformers.AutoConfig.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    load_mlm("tiny://llava_next")
    assert seen and seen[0] is False and True not in seen


def test_dtype_argument(tmp_path):
    mlm = load_mlm("tiny://llava_onevision", dtype="bfloat16")
    assert next(mlm.decoder_layers().parameters()).dtype == torch.bfloat16


def test_random_init_control_same_architecture_fresh_weights():
    trained = load_mlm("tiny://qwen2_5_vl")
    torch.manual_seed(3)
    fresh = load_mlm("tiny://qwen2_5_vl", random_init=True, dtype="bfloat16")
    state = torch.random.get_rng_state()
    again = load_mlm("tiny://qwen2_5_vl", random_init=True, dtype="bfloat16", init_seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # a given seed leaves the global RNG alone
    a, b, c = (m.model.state_dict() for m in (trained, fresh, again))
    assert type(fresh.model) is type(trained.model) and a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape and b[k].dtype == torch.bfloat16 for k in a if a[k].is_floating_point())
    q_proj = fresh.decoder_layers()[0].self_attn.q_proj.weight
    assert not torch.allclose(q_proj.float(), trained.decoder_layers()[0].self_attn.q_proj.weight, atol=1e-2)  # new ...
    assert all(torch.equal(b[k], c[k]) for k in b)  # ... drawn from the torch RNG (seeded: reproducible)
    assert fresh.processor.tokenizer.get_vocab() == trained.processor.tokenizer.get_vocab()
    with pytest.raises(ModelLoadError, match="one device"):
        load_mlm("tiny://qwen2_5_vl", random_init=True, device_map="auto")


def test_tiny_cli_writes_a_loadable_folder(tmp_path, capsys):
    assert cli_main(["tiny", "llava_next", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "config.json").is_file()
    assert load_mlm(str(tmp_path / "m")).family == "llava_next"
    assert cli_main(["tiny", "gpt2", "--out", str(tmp_path / "x")]) == 2
    assert "unknown family" in capsys.readouterr().err
