"""The default evaluation is lmms-eval's BLINK protocol; resolution settings reach the processor; outputs name
the protocol, the resolution and the data revision; results key on the loaded subtask; every applied
intervention (a checkpoint's included, with calibrated positions) is recorded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from helpers_blink import one_torch_thread  # noqa: F401 (autouse fixture)
from vkvtrain import Prompt, load_mlm
from vkvtrain.cli import main
from vkvtrain.data.synthetic_blink import synthetic_blink
from vkvtrain.errors import PromptError
from vkvtrain.evaluation.cli import parse_config
from vkvtrain.evaluation.config import EvalConfig, Qwen2_5_VLResolution, ResolutionConfig
from vkvtrain.evaluation.protocol import PromptProtocol

CONFIG = str(Path(__file__).resolve().parents[1] / "eval" / "blink.yaml")
LMMS_PRE_PROMPT = "Note: You only need to respond with {} without providing any additional information.\n"


def test_eval_yaml_is_the_dataclass_default_and_lmms_evals_protocol() -> None:
    cfg = parse_config([CONFIG])
    assert cfg == EvalConfig()  # the documented file and the typed defaults agree, key by key
    assert cfg.mode == "generate" and cfg.max_new_tokens == 1024  # lmms_eval/tasks/blink/_default_template_yaml
    assert cfg.prompt.pre_prompt == LMMS_PRE_PROMPT and cfg.prompt.post_prompt == ""
    assert (cfg.resolution.qwen2_5_vl.min_pixels, cfg.resolution.qwen2_5_vl.max_pixels) == (256 * 28 * 28, 1605632)
    assert cfg.protocol()["name"].startswith("lmms-eval BLINK")
    assert not EvalConfig(max_new_tokens=16).protocol()["name"].startswith("lmms-eval")
    assert not EvalConfig(prompt=PromptProtocol(pre_prompt="")).protocol()["name"].startswith("lmms-eval")
    assert EvalConfig(mode="likelihood").protocol()["name"].startswith("choice likelihood")


def _image_tokens(mlm, image: Image.Image) -> int:
    return mlm.encode([Prompt(images=[image], text="q")]).spans[0][0].length


@pytest.mark.parametrize("min_pixels,max_pixels", [(None, None), (None, 2048), (256, 1024), (8192, 16384)])
def test_qwen_pixel_budget_sets_the_image_token_count(min_pixels, max_pixels) -> None:
    mlm = load_mlm("tiny://qwen2_5_vl")
    default = mlm.adapter.resolution(mlm.processor)
    image = Image.new("RGB", (200, 120), (90, 30, 200))
    applied = ResolutionConfig(Qwen2_5_VLResolution(min_pixels, max_pixels)).apply(mlm)
    low, high = min_pixels or default["min_pixels"], max_pixels or default["max_pixels"]
    assert (applied["min_pixels"], applied["max_pixels"]) == (low, high)
    factor = applied["patch_size"] * applied["merge_size"]
    h, w = smart_resize(120, 200, factor=factor, min_pixels=low, max_pixels=high)  # transformers' own rule
    assert _image_tokens(mlm, image) == (h // factor) * (w // factor)


def test_max_pixels_changes_the_image_tokens_and_anyres_families_refuse_settings() -> None:
    mlm = load_mlm("tiny://qwen2_5_vl")
    image = Image.new("RGB", (200, 120))
    counts = []
    for budget in (4096, 1024):
        ResolutionConfig(Qwen2_5_VLResolution(min_pixels=64, max_pixels=budget)).apply(mlm)
        counts.append(_image_tokens(mlm, image))
    assert counts[0] > counts[1] > 0
    with pytest.raises(PromptError, match="has min_pixels and max_pixels"):
        mlm.adapter.set_resolution(mlm.processor, {"image_size": 3})
    for family in ("llava_onevision", "llava_next"):
        other = load_mlm(f"tiny://{family}")
        assert ResolutionConfig().apply(other)["family"] == family  # nothing to set: processor defaults kept
        with pytest.raises(PromptError, match=f"{family} has no processor resolution setting"):
            other.adapter.set_resolution(other.processor, {"max_pixels": 1024})


def test_outputs_name_protocol_resolution_revision_and_key_on_the_loaded_subtask(tmp_path: Path, capsys) -> None:
    root = tmp_path / "blink"
    for name, ds in synthetic_blink(2, seed=0, subtasks=["Art_Style", "Counting"], image_size=32).items():
        (root / name).mkdir(parents=True)
        ds.map(lambda row: {"sub_task": name.lower().replace("_", " ")}).to_parquet(str(root / name / "val.parquet"))
    out = tmp_path / "out"
    rc = main(["evaluate", CONFIG, "--model", "tiny://qwen2_5_vl", "--data.root", str(root), "--output_dir", str(out),
               "--data.subtasks", "[Art_Style, Counting]",
               "--max_new_tokens", "3", "--resolution.qwen2_5_vl.min_pixels", "64",
               "--resolution.qwen2_5_vl.max_pixels", "1024", "--probes.probe_layer", "-1", "--progress", "false"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    printed = captured.out
    res = json.loads((out / "results.json").read_text())
    recs = [json.loads(x) for x in (out / "responses.jsonl").read_text().splitlines()]
    assert list(res["subtasks"]) == ["Art_Style", "Counting"]  # the loaded folder names, not "art style"
    assert {r["sub_task"] for r in recs} == {"Art_Style", "Counting"} and "Art_Style" in res["latent"]["subtasks"]
    assert res["protocol"] == EvalConfig(max_new_tokens=3).protocol()
    assert res["resolution"]["family"] == "qwen2_5_vl" and res["resolution"]["max_pixels"] == 1024
    files = sorted(root.glob("*/val.parquet"))
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    assert res["data"]["source"] == "local" and res["data"]["revision"] == f"sha256:{digest}"
    md = (out / "results.md").read_text()
    summary = printed.split("== evaluate")[-1]  # the closing summary: protocol, resolution and data lines
    for text in ("protocol: greedy generation", "max_pixels=1024", f"revision sha256:{digest}"):
        assert text in md and " ".join(text.split(": ", 1)) in " ".join(summary.split())


def test_checkpoint_interventions_are_recorded_with_their_calibrated_positions(tmp_path: Path) -> None:
    from vkvtrain.checkpointing import checkpoint_entry, intervention_state
    from vkvtrain.data.synthetic_blink import synthetic_blink_questions
    from vkvtrain.evaluation.scoring import prompts_for
    from vkvtrain.interventions import AttentionBlocking

    mlm = load_mlm("tiny://llava_onevision")
    trained = AttentionBlocking(layers=[-1], top_k=2)  # calibrated during training: positions in the state
    pending = AttentionBlocking(layers=[0], top_k=3)  # saved before calibration: calibrated by evaluate
    for iv in (trained, pending):
        iv.attach(mlm)
    trained.set_positions({3: [5, 7]})
    ckpt = tmp_path / "blocking.ckpt"
    torch.save({"state_dict": intervention_state([trained, pending]),
                **checkpoint_entry("", "tiny://llava_onevision", [trained, pending])}, ckpt)
    out = tmp_path / "out"
    subtasks = ["Counting", "Art_Style"]
    assert main(["evaluate", CONFIG, "--ckpt_path", str(ckpt), "--data.source", "synthetic", "--data.synthetic_n", "2",
                 "--data.subtasks", json.dumps(subtasks), "--mode", "likelihood", "--calibration_questions", "3",
                 "--batch_size", "2", "--probes.enabled", "false", "--output_dir", str(out), "--progress", "false",
                 "--interventions", '[{"class_path": "vkvtrain.interventions.AttentionBlocking", '
                 '"init_args": {"layers": [1], "positions": [0]}}]']) == 0
    applied = json.loads((out / "results.json").read_text())["interventions"]
    assert [a["source"] for a in applied] == [f"checkpoint {ckpt}"] * 2 + ["config"]
    assert applied[0]["blocked_positions"] == {"3": [5, 7]} and applied[2]["blocked_positions"] == {"1": [0]}
    # oracle: the same calibration by hand on a fresh model and the same first questions
    fresh = load_mlm("tiny://llava_onevision")
    oracle = AttentionBlocking(layers=[0], top_k=3)
    oracle.attach(fresh)
    first = synthetic_blink_questions(2, 0, subtasks)[:3]
    batches = [fresh.encode(prompts_for(first[i:i + 2], PromptProtocol())) for i in (0, 2)]
    assert applied[1]["blocked_positions"] == {"0": oracle.calibrate(fresh, batches)[0]}


RESPONSES = ["B", "(B)", "b", " (c) the third", "B. because", "The correct answer is (B)", "I think A", "E", "(E)",
             "", "   ", "answer: B", "A or B", "**B**", "1", "(A)(B)", "z", "D."]


@pytest.mark.parametrize("n_choices", [2, 4])
def test_lmms_eval_parser_scores_like_lmms_eval(n_choices: int) -> None:
    """Right/wrong per response equals lmms-eval's blink_process_results (first letter == gold.strip("()"))."""
    import re

    from vkvtrain.evaluation.parse import lmms_eval_choice

    for text in RESPONSES:
        m = re.match(r"[\(\s]*([A-Z])[\)\.\s]*", text.strip(), flags=re.IGNORECASE)  # lmms-eval's rule
        theirs = m.group(1).upper() if m else ""
        for gold in "ABCD"[:n_choices]:
            assert (lmms_eval_choice(text, n_choices) == gold) == (theirs == f"({gold})".strip("()")), (text, gold)
    assert EvalConfig(parser="lmms_eval").protocol() != EvalConfig().protocol()  # compare keeps them apart


def test_hub_source_records_requested_and_cached_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets caches a hub dataset under <name>/<config>/<version>/<commit sha>/ (builder._relative_data_dir
    with the module hash = commit sha): that folder names the revision read."""
    from types import SimpleNamespace

    import datasets

    from vkvtrain.data.blink import hub_commit, read_blink

    fake = synthetic_blink(1, seed=0, subtasks=["Jigsaw"])
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, split=None, revision=None: fake[name])
    assert read_blink(["Jigsaw"], revision="v1.0").source == {
        "source": "hub", "hub_id": "BLINK-Benchmark/BLINK", "split": "val", "revision_requested": "v1.0",
        "revision": "v1.0"}
    assert read_blink(["Jigsaw"]).source["revision"].startswith("unpinned")
    sha = "0123456789abcdef0123456789abcdef01234567"
    cached = SimpleNamespace(cache_files=[{"filename": f"/c/BLINK-Benchmark___blink/Jigsaw/0.0.0/{sha}/blink-val.arrow"}])
    assert hub_commit(cached) == sha and hub_commit(SimpleNamespace(cache_files=[{"filename": "/tmp/x.arrow"}])) is None
