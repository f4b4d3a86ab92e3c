"""The model organism: the world's exact ground truth, its question sets, and a tiny build end to end.

The full-size figures (taught accuracy, probe deltas, surfacing gap) come from the build itself
(``benchmarks/organism_build.py``), never from these tests: here the tiny size checks plumbing and bookkeeping.
"""

from __future__ import annotations

import json
import math
from collections import Counter
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from vkvtrain import Prompt, load_mlm
from vkvtrain.data.blink import BLINK_SUBTASKS, LETTERS, load_blink
from vkvtrain.data.training import DataSource, ExampleDataset
from vkvtrain.errors import ModelLoadError, UnsupportedModelError
from vkvtrain.evaluation.latent import PROBES, _cell
from vkvtrain.models.llava_onevision import CHAT_TEMPLATE as CHATML_LLAVA_OV
from vkvtrain.organism import build as organism_build
from vkvtrain.organism import train as organism_train
from vkvtrain.organism.build import MARKER, REPORT, OrganismBuildError, build
from vkvtrain.organism.groundtruth import random_control
from vkvtrain.organism.perception import WorldKeypointPairs
from vkvtrain.organism.questions import (
    COUNT_SIZES,
    GAP_SUBTASKS,
    ORGANISM_PROTOCOL,
    TAUGHT,
    TEXTURE_WORDS,
    gap_questions,
    question_rng,
    taught_questions,
    write_gap_blink,
)
from vkvtrain.organism.train import (
    QA_CYCLE,
    StageConfig,
    dense_targets,
    pixel_values,
    taught_prompts,
    taught_stream,
    train_qa,
)
from vkvtrain.organism.world import (
    GRID,
    KINDS,
    PARTS,
    PATCH,
    WorldObject,
    cell_fractions,
    cell_of,
    inside,
    part_point,
    render,
)


# ------------------------------------------------------------------------------------------ the world
def test_masks_and_parts_are_exact() -> None:
    """A planted square: its mask is the analytic set of pixel centres, its parts the analytic sectors."""
    square = WorldObject("square", "red", "plain", cx=32.0, cy=24.0, size=40.0)
    scene = render([square], background_seed=3)
    centres = np.arange(64) + 0.5
    cols = np.abs(centres - 32.0) <= 0.9 * 20  # the square spans 0.9 of its half-side
    rows = np.abs(centres - 24.0) <= 0.9 * 20
    assert np.array_equal(scene.mask(0), rows[:, None] & cols[None, :])
    assert scene.mask(0).sum() == 36 * 36
    assert (scene.image[scene.mask(0)] == (215, 40, 35)).all()  # plain red, no light change
    # parts by sector of the pixel centre relative to the box centre (32, 24), half-side 20
    for (r, c), part in {(8, 32): "top", (24, 48): "right", (40, 32): "bottom", (24, 14): "left",
                         (24, 32): "centre"}.items():
        assert scene.parts[r, c] == PARTS.index(part) + 1, (r, c, part)
    assert (scene.parts[~scene.mask(0)] == 0).all()
    assert scene.uv[8, 32] == pytest.approx(((32.5 - 32) / 20, (8.5 - 24) / 20))  # object-frame coordinates
    assert (scene.uv[~scene.mask(0)] == 0).all()


def test_every_kind_is_drawn_where_its_outline_says() -> None:
    for kind in KINDS:
        obj = WorldObject(kind, "blue", "stripes", cx=30.0, cy=33.0, size=44.0, angle=0.7, phase=1.0)
        scene = render([obj], background_seed=1)
        yy, xx = np.mgrid[0:64, 0:64] + 0.5
        expected = inside(kind, (xx - 30.0) / 22.0, (yy - 33.0) / 22.0)
        assert np.array_equal(scene.mask(0), expected), kind
        assert set(np.unique(scene.parts[expected])) == set(range(1, len(PARTS) + 1)), kind  # all 5 parts exist


def test_cell_fractions_equal_the_mean_of_one_hot_blocks() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(64, 64))
    one_hot = np.eye(5)[labels]
    oracle = one_hot.reshape(GRID, PATCH, GRID, PATCH, 5).mean((1, 3))
    assert np.allclose(cell_fractions(labels, 5), oracle)


@pytest.mark.parametrize("part", PARTS)
def test_a_planted_part_point_maps_to_the_right_grid_cell(part: str) -> None:
    """The point lies on the part, in the cell where the part covers most pixels, and the latent probe's own
    point-to-cell rule (evaluation.latent._cell) reads that same cell."""
    obj = WorldObject("cross", "green", "dots", cx=35.0, cy=30.0, size=50.0)
    scene = render([obj], background_seed=2)
    point = part_point(scene, 0, part)
    assert point is not None
    px, py = int(point[0] * 64), int(point[1] * 64)
    assert scene.parts[py, px] == PARTS.index(part) + 1 and scene.instances[py, px] == 1
    on_part = (scene.parts == PARTS.index(part) + 1)
    share = np.array([[on_part[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].mean() for c in range(8)] for r in range(8)])
    row, col = cell_of(point)
    assert share[row, col] == share.max() and share[row, col] >= 0.5
    grid = torch.arange(64.0).reshape(1, 8, 8, 1)  # cell index as the token's value
    assert int(_cell(grid, point)[0, 0]) == row * 8 + col


def test_dense_targets_hold_the_planted_scene() -> None:
    obj = WorldObject("triangle", "yellow", "checks", cx=20.0, cy=44.0, size=24.0)
    scene = render([obj], background_seed=4)
    t = dense_targets(scene)
    assert t["kind"].shape == (GRID * GRID, len(KINDS) + 1)
    assert np.allclose(t["kind"].sum(-1), 1) and np.allclose(t["part"].sum(-1), 1)
    kind_share = t["kind"][:, KINDS.index("triangle") + 1].reshape(GRID, GRID)
    assert np.isclose(kind_share.sum() * PATCH * PATCH, scene.mask(0).sum())
    centre = t["centre"].reshape(GRID, GRID)
    assert centre.sum() == 1 and centre[int(44 // PATCH), int(20 // PATCH)] == 1
    assert t["count"].tolist() == [[1.0, 0.0, 0.0, 0.0]]  # the image-level target: one object
    three = render([obj, WorldObject("circle", "red", "plain", 48.0, 12.0, 16.0),
                    WorldObject("cross", "blue", "dots", 48.0, 48.0, 16.0)], background_seed=4)
    assert dense_targets(three)["count"].argmax(-1).tolist() == [2]


def test_keypoint_pairs_map_each_part_to_the_same_place_on_the_other_shape() -> None:
    pairs = WorldKeypointPairs(6, seed=3)
    for i in range(len(pairs)):
        pair = pairs[i]
        assert pair.source_kps.shape == pair.target_kps.shape and len(pair.source_kps) == len(PARTS)
        src, trg = (np.asarray(im) for im in (pair.source, pair.target))
        assert not np.array_equal(src, trg)
        (a0, b0, a1, b1), (x0, y0, x1, y1) = pair.source_bbox.tolist(), pair.target_bbox.tolist()
        for (sx, sy), (tx, ty) in zip(pair.source_kps.tolist(), pair.target_kps.tolist()):
            # the same object-frame coordinates: the same relative place in the two shapes' boxes
            assert (tx - x0) / (x1 - x0) == pytest.approx((sx - a0) / (a1 - a0), abs=1e-4)
            assert (ty - y0) / (y1 - y0) == pytest.approx((sy - b0) / (b1 - b0), abs=1e-4)
        parts = [render([WorldObject(pair.category, "red", "plain", (a0 + a1) / 2, (b0 + b1) / 2, a1 - a0)], 0).parts,
                 render([WorldObject(pair.category, "red", "plain", (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0)], 0).parts]
        src_parts = [parts[0][int(y), int(x)] for x, y in pair.source_kps.tolist()]
        assert sorted(src_parts) == list(range(1, len(PARTS) + 1))  # one keypoint per part


# ------------------------------------------------------------------------------------------ questions
def test_taught_and_never_taught_types_are_disjoint_and_probed() -> None:
    assert not set(TAUGHT) & set(GAP_SUBTASKS)
    assert not set(TAUGHT) & set(BLINK_SUBTASKS)
    assert set(GAP_SUBTASKS) <= set(PROBES)  # every gap subtask has a latent probe


def test_training_stream_numbers_each_type_on_its_own_and_balances_its_answers() -> None:
    """A question's answer letter cycles with its number, so stage b numbers each type's questions 0, 1, 2, ... on
    their own: numbered by place in the stream, a cycle whose length shares a factor with a type's number of options
    (7 vs 4 and 6 is safe, 6 is not) would tie that type's answers to the cycle."""
    n_choices = {name: len(taught_questions(1, 0, "train", [name])[0].choices) for name in TAUGHT}
    stream = [taught_stream(i) for i in range(5 * len(QA_CYCLE))]
    assert [name for name, _ in stream] == list(QA_CYCLE) * 5
    for name in TAUGHT:
        assert [n for t, n in stream if t == name] == list(range(5 * QA_CYCLE.count(name))), name
    period = len(QA_CYCLE) * math.lcm(*n_choices.values())  # every type's letters a whole number of times
    seen: dict[str, Counter[str]] = {name: Counter() for name in TAUGHT}
    for step in range(period // 12):
        prompts, names = taught_prompts(0, step, 12, ORGANISM_PROTOCOL)
        for prompt, name in zip(prompts, names):
            seen[name][str(prompt.answer)] += 1
    for name, letters in seen.items():
        assert sorted(letters) == [f"({letter})" for letter in LETTERS[:n_choices[name]]], name
        assert len(set(letters.values())) == 1, (name, letters)  # every letter equally often


def test_stage_b_trains_the_lm_but_not_what_the_latent_probe_reads(tmp_path: Path) -> None:
    """Stage b leaves the vision tower, the projector and the LM's layer-0 value projection (the values a latent
    probe reads at layer 0) as they were, and trains the rest of the LM, layer 0's keys and output included."""
    mlm = organism_build.untrained_organism("llava_onevision", "tiny", 0)
    model = mlm.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_qa(mlm, StageConfig(steps=2, batch_size=4, lr=1e-2, warmup=1), seed=0, progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    layer0 = "model.language_model.layers.0.self_attn."
    assert not {k for k in changed if "vision_tower" in k or "multi_modal_projector" in k}
    assert not {k for k in changed if k.startswith(layer0 + "v_proj")}
    assert {layer0 + "k_proj.weight", layer0 + "o_proj.weight", "model.language_model.layers.1.self_attn.v_proj.weight",
            "lm_head.weight"} <= changed
    assert all(p.requires_grad for p in model.parameters())  # handed back trainable, as it came


def test_taught_answers_agree_with_the_scene() -> None:
    questions = taught_questions(8, seed=1, split="val")
    assert [q.sub_task for q in questions] == [t for t in TAUGHT for _ in range(8)]
    for q in questions:
        objects = q.meta["objects"]
        gold = q.choices[q.answer_index]
        assert len(set(q.choices)) == len(q.choices)
        if q.sub_task == "count":
            assert gold == str(len(objects))
            # one size range for every count: the area the shapes cover does not give the count away
            assert all(COUNT_SIZES[0] <= o["size"] <= COUNT_SIZES[1] for o in objects), objects
            continue
        (obj,) = objects  # colour, shape and pattern ask about a scene's one shape, named in the question
        if q.sub_task == "colour":
            assert (gold, q.question) == (obj["colour"], f"What colour is the {obj['kind']}?")
        elif q.sub_task == "shape":
            assert (gold, q.question) == (obj["kind"], f"What shape is the {obj['colour']} object?")
        else:
            assert (gold, q.question) == (TEXTURE_WORDS[obj["texture"]], f"What pattern does the {obj['kind']} have?")
    for name in TAUGHT:  # answer letters cycle, so an image-blind model scores chance exactly
        of_type = [q for q in questions if q.sub_task == name]
        assert [q.answer for q in of_type] == [LETTERS[i % of_type[0].n_choices] for i in range(8)]


def test_gap_answers_point_at_the_corresponding_part() -> None:
    questions = gap_questions(6, seed=2, split="val")
    assert {q.sub_task for q in questions} == set(GAP_SUBTASKS)
    for q in questions:
        assert q.answer in q.letters and q.prompt.startswith(q.question + "\nSelect from the following choices.")
        objects = q.meta["objects"]
        if q.sub_task in ("Semantic_Correspondence", "Functional_Correspondence"):
            assert q.meta["parts"][q.answer_index] == q.meta["ref_part"]
            assert len(set(q.meta["parts"])) == 4
            same = objects[0][0]["kind"] == objects[1][0]["kind"]
            assert same == (q.sub_task == "Semantic_Correspondence")
            assert objects[0][0]["colour"] != objects[1][0]["colour"]
            assert objects[0][0]["texture"] != objects[1][0]["texture"]
            # the gold point lies on the REF's part of the second shape, in its best cell
            scene = render([WorldObject(**objects[1][0])], 0)
            x, y = q.points["image_2"][q.answer]
            assert scene.parts[int(y * 64), int(x * 64)] == PARTS.index(q.meta["ref_part"]) + 1
        elif q.sub_task == "Visual_Correspondence":
            (rx, ry), (dx, dy) = q.points["image_1"]["REF"], q.meta["shift"]
            assert q.points["image_2"][q.answer] == pytest.approx((rx - dx / 64, ry - dy / 64))
        elif q.sub_task == "Visual_Similarity":
            kinds = [sorted(o["kind"] for o in image) for image in objects]
            assert kinds[1 + q.answer_index] == kinds[0] and not set(kinds[2 - q.answer_index]) & set(kinds[0])
        else:
            textures = [{o["texture"] for o in image} for image in objects]
            assert textures[1 + q.answer_index] == textures[0] != textures[2 - q.answer_index]


def test_splits_use_disjoint_streams_and_are_deterministic() -> None:
    def digest(questions) -> set[bytes]:
        return {np.asarray(im).tobytes() for q in questions for im in q.images}

    train = gap_questions(4, seed=0, split="train") + taught_questions(4, seed=0, split="train")
    val = gap_questions(4, seed=0, split="val") + taught_questions(4, seed=0, split="val")
    again = gap_questions(4, seed=0, split="val") + taught_questions(4, seed=0, split="val")
    assert not digest(train) & digest(val)
    assert digest(val) == digest(again) and [q.answer for q in val] == [q.answer for q in again]
    streams = {(split, name, i): question_rng(0, split, name, i).integers(2**62) for split in ("train", "val")
               for name in TAUGHT + GAP_SUBTASKS for i in range(3)}
    assert len(set(streams.values())) == len(streams)


def test_gap_questions_round_trip_through_blink_folders(tmp_path: Path) -> None:
    write_gap_blink(tmp_path, 3, seed=0, split="val")
    write_gap_blink(tmp_path, 2, seed=0, split="train")
    loaded = load_blink(subtasks=list(GAP_SUBTASKS), split="val", root=tmp_path)
    made = gap_questions(3, seed=0, split="val")
    assert [(q.idx, q.answer, q.choices) for q in loaded] == [(q.idx, q.answer, q.choices) for q in sorted(
        made, key=lambda q: BLINK_SUBTASKS.index(q.sub_task))]
    by_idx = {q.idx: q for q in made}
    for q in loaded:
        assert q.points == (None if by_idx[q.idx].points is None else {
            k: {n: pytest.approx(xy) for n, xy in v.items()} for k, v in by_idx[q.idx].points.items()})
    train = ExampleDataset(DataSource(source=str(tmp_path), split="train", image_columns=["image_1", "image_2"],
                                      question_field="prompt", answer_field="answer", task_field="sub_task",
                                      choices_field="choices", points_field="points"))
    assert len(train) == 2 * len(GAP_SUBTASKS)


# ------------------------------------------------------------------------------------------ the build
@pytest.fixture(scope="module")
def tiny_organism(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """organism://llava_onevision@tiny, built once into a private cache."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VKVTRAIN_CACHE", str(cache))
        return organism_build.ensure_organism("llava_onevision", "tiny")


def test_tiny_build_loads_by_name_and_folder_and_reports(tiny_organism: Path, monkeypatch) -> None:
    monkeypatch.setenv("VKVTRAIN_CACHE", str(tiny_organism.parent.parent))
    by_name = load_mlm("organism://llava_onevision@tiny")
    by_folder = load_mlm(str(tiny_organism))
    assert type(by_name.model).__name__ == "LlavaOnevisionForConditionalGeneration"
    for a, b in zip(by_name.model.state_dict().values(), by_folder.model.state_dict().values()):
        assert torch.equal(a, b)
    marker = json.loads((tiny_organism / MARKER).read_text())
    assert (marker["family"], marker["size"], marker["stage_a"]) == ("llava_onevision", "tiny", "trained")
    report = json.loads((tiny_organism / REPORT).read_text())
    assert set(report["taught"]) == set(TAUGHT) and set(report["gap"]) == set(GAP_SUBTASKS)
    assert set(report["probes"]) == {"fewshot", "keypoints"}
    assert set(report["key_agnosticism"]) == {str(i) for i in range(by_name.num_layers)}
    assert {"taught_accuracy", "gap_subtasks", "learned_subtasks"} <= set(report["criteria"])


def test_organism_folder_and_stage_a_cache_get_the_usual_modes(tiny_organism: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    cached = [tiny_organism, *tiny_organism.iterdir(), *(tiny_organism.parent / "stage_a").iterdir()]
    assert any(p.suffix == ".safetensors" for p in cached)
    for path in cached:  # save_pretrained and safetensors write 0600 files on their own
        assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~umask, path


def test_tiny_organism_answers_in_the_chat_template(tiny_organism: Path) -> None:
    mlm = load_mlm(str(tiny_organism))
    assert mlm.processor.chat_template == CHATML_LLAVA_OV
    q = taught_questions(1, seed=0, split="val", types=["colour"])[0]
    batch = mlm.encode([Prompt(images=q.images, text=q.question, answer=q.answer)])
    text = batch.texts[0]
    assert text.startswith("<|im_start|>user\n<image>\n") and text.endswith(f"<|im_start|>assistant\n{q.answer}<|im_end|>")
    labelled = batch.inputs["labels"][0][batch.inputs["labels"][0] != -100]
    assert mlm.tokenizer.decode(labelled) == f"{q.answer}<|im_end|>"
    out = mlm.model.generate(**mlm.encode([Prompt(images=q.images, text=q.question)]).inputs, max_new_tokens=2,
                             do_sample=False)
    assert out.shape[1] > batch.inputs["input_ids"].shape[1] - 2  # the prompt without its answer, then tokens


def test_pixel_values_equal_the_processors_base_crop(tiny_organism: Path) -> None:
    mlm = load_mlm(str(tiny_organism))
    images = [q.images[0] for q in taught_questions(2, seed=0, split="val", types=["shape"])]
    ours = pixel_values(mlm, np.stack([np.asarray(im) for im in images]))
    theirs = mlm.processor.image_processor(images, return_tensors="pt")["pixel_values"][:, 0]
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_random_control_equals_load_mlm_random_init(tiny_organism: Path) -> None:
    mlm = load_mlm(str(tiny_organism))
    ours = random_control(mlm, init_seed=1).model.state_dict()
    theirs = load_mlm(str(tiny_organism), random_init=True, init_seed=1).model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not torch.equal(ours["lm_head.weight"], mlm.model.state_dict()["lm_head.weight"])


@pytest.mark.parametrize("stage", ["train_vision", "train_qa", "measure", "summary"])
def test_interrupted_build_leaves_nothing_that_loads_and_resumes(stage: str, tmp_path: Path, monkeypatch) -> None:
    """An interrupt at any step (stage a, stage b, the measurements, the report) leaves no folder and no staging
    folder; the next build completes, resuming stage a's vision weights when stage a had finished."""
    monkeypatch.setenv("VKVTRAIN_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "organism"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(organism_build, stage, interrupted)
    with pytest.raises(KeyboardInterrupt):
        build("llava_onevision", str(target), size="tiny", measure=stage in ("measure", "summary"), progress=False)
    assert not target.exists() and not list(tmp_path.glob(".organism*"))  # no staging folder left either
    with pytest.raises(ModelLoadError):
        load_mlm(str(target))
    monkeypatch.undo()
    monkeypatch.setenv("VKVTRAIN_CACHE", str(tmp_path / "cache"))
    build("llava_onevision", str(target), size="tiny", measure=False, progress=False)
    resumed = json.loads((target / MARKER).read_text())["stage_a"]
    assert resumed == ("trained" if stage == "train_vision" else "resumed")
    with pytest.raises(OrganismBuildError, match="already exists"):
        build("llava_onevision", str(target), size="tiny", measure=False, progress=False)


def test_every_seed_is_measured_on_the_same_held_out_data_and_control(tmp_path: Path, monkeypatch) -> None:
    """The build seed draws the weights and the training data; the measurements (questions, scenes, the random-init
    control) are the same for every seed, so two builds compare on the same questions."""
    monkeypatch.setenv("VKVTRAIN_CACHE", str(tmp_path / "cache"))
    seen: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], object]] = []

    def recorded(mlm, control, opts, progress):
        seen.append((mlm.model.state_dict(), control.model.state_dict(), opts))
        raise KeyboardInterrupt  # nothing more to build

    monkeypatch.setattr(organism_build, "measure", recorded)
    for seed in (0, 1):
        with pytest.raises(KeyboardInterrupt):
            build("llava_onevision", str(tmp_path / f"s{seed}"), size="tiny", seed=seed, progress=False)
    (model0, control0, opts0), (model1, control1, opts1) = seen
    assert opts0 == opts1
    assert all(torch.equal(control0[k], control1[k]) for k in control0)
    assert not torch.equal(model0["lm_head.weight"], model1["lm_head.weight"])


def test_stage_a_resumes_only_for_the_same_recipe(tmp_path: Path, monkeypatch) -> None:
    """The stage-a cache is keyed by what the tower's training depends on: the same recipe resumes it, a changed
    loss weight or target trains anew (an old tower under a new recipe would be measured as the new one)."""
    monkeypatch.setenv("VKVTRAIN_CACHE", str(tmp_path / "cache"))

    def stage_a(name: str) -> str:
        folder = build("llava_onevision", str(tmp_path / name), size="tiny", measure=False, progress=False)
        return json.loads((folder / MARKER).read_text())["stage_a"]

    assert [stage_a("first"), stage_a("same")] == ["trained", "resumed"]
    monkeypatch.setattr(organism_train, "HEAD_WEIGHTS", {**organism_train.HEAD_WEIGHTS, "count": 0.5})
    assert stage_a("reweighted") == "trained"
    monkeypatch.setattr(organism_train, "MARKER_SHARE", 0.5)
    assert stage_a("more_markers") == "trained"


def test_a_half_written_cache_folder_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VKVTRAIN_CACHE", str(tmp_path))
    folder = organism_build.organism_cache_dir() / organism_build._key("llava_onevision", "tiny", 0)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(OrganismBuildError, match="incomplete"):
        load_mlm("organism://llava_onevision@tiny")


def test_bad_requests_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="llava_onevision, llava_next"):
        build("qwen3", str(tmp_path / "a"), size="tiny")
    with pytest.raises(UnsupportedModelError, match="organism families"):
        load_mlm("organism://not_a_family")
    with pytest.raises(OrganismBuildError, match="full, tiny"):
        build("llava_onevision", str(tmp_path / "b"), size="huge")
    with pytest.raises(OrganismBuildError, match="too small a budget.*at least 21"):
        build("llava_onevision", str(tmp_path / "c"), size="full", vision_steps=5)
    assert not any(tmp_path.iterdir())


def test_llava_next_organism_builds_with_the_same_code(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VKVTRAIN_CACHE", str(tmp_path / "cache"))
    folder = build("llava_next", str(tmp_path / "next"), size="tiny", progress=False)
    mlm = load_mlm(str(folder))
    assert type(mlm.model).__name__ == "LlavaNextForConditionalGeneration"
    report = json.loads((folder / REPORT).read_text())
    assert set(report["gap"]) == set(GAP_SUBTASKS) and set(report["taught"]) == set(TAUGHT)
    q = taught_questions(1, seed=0, split="val", types=["count"])[0]
    text = mlm.encode([Prompt(images=q.images, text=q.prompt)]).texts[0]
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\n")
