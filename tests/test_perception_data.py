"""Perception loaders on tiny fake trees in their native layouts, and the synthetic generators' ground truth."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vkvtrain.data.perception import (DAVIS, LOADERS, CosegGroup, FewShotEpisode, ImageNetS, KeypointPair,
                                      MSRCCoseg, Pascal5i, RefCOCO, SegSample, SPair71k, VideoClip)
from vkvtrain.data.perception.plain_pickle import UnsafePickleError, load_plain_pickle
from vkvtrain.data.synthetic_perception import COLORS, SyntheticClips, SyntheticKeypointPairs
from vkvtrain.errors import DatasetError, VKVError
from vkvtrain.probes.tasks import REGISTRY
from shared_data import SHARED_DATA

SYNTHETIC = {name: task.synthetic for name, task in REGISTRY.items() if task.loader is not None}

SHARED = SHARED_DATA


def _rgb(path: Path, w: int = 20, h: int = 16, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _palette(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def _voc(root: Path) -> None:
    ids = ["2007_000001", "2007_000002", "2007_000003", "2007_000004"]
    for n, image_id in enumerate(ids):
        _rgb(root / "JPEGImages" / f"{image_id}.jpg", seed=n)
        lab = np.zeros((16, 20), np.uint8)
        lab[2:8, 3:9] = 1 if n < 3 else 12  # aeroplane (fold 0) x3, dog (fold 2) x1
        lab[0, :] = 255
        _palette(root / "SegmentationClass" / f"{image_id}.png", lab)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")


def test_pascal5i_from_image_sets_and_fold_list(tmp_path: Path) -> None:
    _voc(tmp_path / "VOC2012")
    ds = Pascal5i(tmp_path / "VOC2012", fold=0, shots=2)
    assert ds.task == "fewshot" and len(ds) == 3
    ep = ds[0]
    assert isinstance(ep, FewShotEpisode) and ep.class_name == "aeroplane" and len(ep.support) == 2
    assert ep.query.image_id not in [s.image_id for s in ep.support]
    assert int(ep.query.mask.sum()) == 36 and int(ep.query.ignore.sum()) == 20
    assert ep.query.mask.shape == (16, 20) and ep.query.image.size == (20, 16)
    assert [s.image_id for s in ds[0].support] == [s.image_id for s in Pascal5i(tmp_path / "VOC2012", shots=2)[0].support]
    fold = tmp_path / "fold0.txt"
    fold.write_text("2007_000001__00001\n2007_000002__00001\n")
    assert len(Pascal5i(tmp_path / "VOC2012", fold=0, shots=1, fold_list=fold)) == 2
    fold.write_text("2007_000001 one\n")
    with pytest.raises(DatasetError, match="fold0.txt:1"):
        Pascal5i(tmp_path / "VOC2012", fold=0, fold_list=fold)
    with pytest.raises(DatasetError, match="dog has 1 image"):
        Pascal5i(tmp_path / "VOC2012", fold=2)


def test_loaders_fail_clearly_on_missing_roots(tmp_path: Path) -> None:
    for name, cls in LOADERS.items():
        with pytest.raises(DatasetError, match="missing. Expected the native layout"):
            cls(tmp_path / "nope")
    (tmp_path / "VOC2012").mkdir()
    with pytest.raises(DatasetError, match="JPEGImages"):
        Pascal5i(tmp_path / "VOC2012")


def test_msrc_groups(tmp_path: Path) -> None:
    for g in ("cow", "plane"):
        for j in range(3):
            _rgb(tmp_path / g / f"{j}_s.bmp", seed=j)
            m = np.zeros((16, 20), np.uint8)
            m[4:10, 5:12] = 255
            (tmp_path / g / "GroundTruth").mkdir(parents=True, exist_ok=True)
            Image.fromarray(m).save(tmp_path / g / "GroundTruth" / f"{j}_s.png")
    ds = MSRCCoseg(tmp_path)
    assert len(ds) == 2 and ds.task == "coseg"
    group = ds[1]
    assert isinstance(group, CosegGroup) and group.name == "plane" and len(group.samples) == 3
    assert int(group.samples[0].mask.sum()) == 42
    (tmp_path / "cow" / "GroundTruth" / "2_s.png").unlink()
    with pytest.raises(DatasetError, match="has no mask"):
        MSRCCoseg(tmp_path)


def test_imagenet_s(tmp_path: Path) -> None:
    root = tmp_path / "ImageNetS50"
    _rgb(root / "validation" / "n01443537" / "ILSVRC2012_val_00000001.JPEG")
    lab = np.zeros((16, 20, 3), np.uint8)
    lab[3:9, 4:10, 0] = 7  # class 7
    lab[0, :5, 0], lab[0, :5, 1] = 1000 % 256, 1000 // 256  # ignore
    (root / "validation-segmentation" / "n01443537").mkdir(parents=True)
    Image.fromarray(lab).save(root / "validation-segmentation" / "n01443537" / "ILSVRC2012_val_00000001.png")
    names = tmp_path / "LOC_synset_mapping.txt"
    names.write_text("n01443537 goldfish, Carassius auratus\n")
    s = ImageNetS(root, names_file=names)[0]
    assert isinstance(s, SegSample) and s.class_id == 7 and s.text == "goldfish"
    assert int(s.mask.sum()) == 36 and int(s.ignore.sum()) == 5
    assert ImageNetS(root)[0].text == "n01443537"


def test_refcoco_polygons_and_rle(tmp_path: Path) -> None:
    (tmp_path / "refcoco").mkdir()
    refs = [{"ref_id": 0, "ann_id": 5, "image_id": 9, "split": "val", "category_id": 1,
             "sentences": [{"sent": "man on the left"}, {"sent": "left guy"}]},
            {"ref_id": 1, "ann_id": 6, "image_id": 9, "split": "testA", "category_id": 1,
             "sentences": [{"sent": "right man"}]}]
    with open(tmp_path / "refcoco" / "refs(unc).p", "wb") as fh:
        pickle.dump(refs, fh)
    counts = [16 * 4, 16 * 3]  # columns 0..3 background, columns 4..6 foreground (column-major)
    counts.append(16 * 20 - sum(counts))
    inst = {"images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": 16, "width": 20}],
            "annotations": [{"id": 5, "segmentation": [[2, 2, 10, 2, 10, 8, 2, 8]]},
                            {"id": 6, "segmentation": {"counts": counts, "size": [16, 20]}}],
            "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps(inst))
    _rgb(tmp_path / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000000009.jpg")
    ds = RefCOCO(tmp_path)
    assert len(ds) == 2 and ds[1].text == "left guy" and ds[0].class_name == "person"
    m = ds[0].mask
    assert m[2:9, 2:11].all() and int(m.sum()) == 9 * 7
    rle = RefCOCO(tmp_path, split="testA")[0].mask
    assert rle[:, 4:7].all() and int(rle.sum()) == 48
    (tmp_path / "refcoco" / "instances.json").write_text("{not json")
    with pytest.raises(DatasetError, match="malformed"):
        RefCOCO(tmp_path)


class _CallOnLoad:
    """Unpickling this calls ``func(*args)``: with ``open(marker, "w")`` a harmless stand-in for a payload."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


class _Custom:
    """A class instance: pickled by reference to this module, rebuilt through copyreg/object.__new__."""

    def __init__(self) -> None:
        self.x = 1


def _payloads(marker: Path) -> dict[str, object]:
    return {
        "open": _CallOnLoad(open, str(marker), "w"),
        "exec": _CallOnLoad(exec, f"open({str(marker)!r}, 'w').close()"),
        "nested in a ref": [{"ref_id": 0, "split": "val", "sentences": [{"sent": _CallOnLoad(open, str(marker), "w")}]}],
        "class instance": [_Custom()],
    }


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("payload", ["open", "exec", "nested in a ref", "class instance"])
def test_refcoco_refs_pickle_cannot_run_code(tmp_path: Path, payload: str, protocol: int) -> None:
    marker = tmp_path / "marker"
    data = pickle.dumps(_payloads(marker)[payload], protocol=protocol)
    if payload != "class instance":  # the payload really runs under plain pickle.load
        loaded = pickle.loads(data)
        assert marker.exists()
        marker.unlink()
        del loaded
    (tmp_path / "refcoco").mkdir()
    refs = tmp_path / "refcoco" / "refs(unc).p"
    refs.write_bytes(data)
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    (tmp_path / "images" / "mscoco" / "images" / "train2014").mkdir(parents=True)
    with pytest.raises(VKVError) as err:
        RefCOCO(tmp_path)
    assert isinstance(err.value, UnsafePickleError)
    assert not marker.exists()
    message = str(err.value)
    assert "\n" not in message and str(refs) in message and "plain data" in message


def test_plain_pickle_reads_plain_data_of_any_protocol(tmp_path: Path) -> None:
    data = [{"ref_id": 1, "sentences": [{"sent": "a dog", "tokens": ("a", "dog")}], "box": [1.5, 2.0], "ok": True,
             "none": None, "tags": {"x", "y"}, "frozen": frozenset({1})}]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.p"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        assert load_plain_pickle(path, "RefCOCO") == data
        path.write_bytes(pickle.dumps([b"\x00"], protocol=protocol))
        if protocol >= 3:  # bytes are an opcode from protocol 3 on
            assert load_plain_pickle(path, "RefCOCO") == [b"\x00"]
        else:  # before, pickle rebuilds bytes by calling _codecs.encode: a call is refused
            with pytest.raises(UnsafePickleError, match="_codecs.encode"):
                load_plain_pickle(path, "RefCOCO")
    path.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DatasetError, match="not a readable pickle"):
        load_plain_pickle(path, "RefCOCO")


def test_probe_command_refuses_a_code_running_refs_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vkvtrain.cli import main

    marker = tmp_path / "marker"
    (tmp_path / "refcoco").mkdir()
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(_CallOnLoad(open, str(marker), "w")))
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    (tmp_path / "images" / "mscoco" / "images" / "train2014").mkdir(parents=True)
    code = main(["probe", "--model", "tiny://llava_next", "--tasks", "referring", "--sources", "layers", "--layers", "[0]",
                 "--data.referring.source", "refcoco", "--data.referring.root", str(tmp_path), "--progress", "false",
                 "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    line = err.strip().splitlines()[-1]  # (transformers' weight-loading bar may come before it)
    assert line.startswith("vkvtrain probe: RefCOCO: ") and "refs(unc).p asks to build io.open" in line


def test_spair71k(tmp_path: Path) -> None:
    _rgb(tmp_path / "JPEGImages" / "cat" / "a.jpg", seed=1)
    _rgb(tmp_path / "JPEGImages" / "cat" / "b.jpg", seed=2)
    ann = {"src_imname": "a.jpg", "trg_imname": "b.jpg", "category": "cat", "src_kps": [[1, 2], [3, 4]],
           "trg_kps": [[5, 6], [7, 8]], "src_bndbox": [0, 0, 10, 10], "trg_bndbox": [1, 1, 12, 9]}
    (tmp_path / "PairAnnotation" / "test").mkdir(parents=True)
    (tmp_path / "PairAnnotation" / "test" / "000001-a-b:cat.json").write_text(json.dumps(ann))
    pair = SPair71k(tmp_path)[0]
    assert isinstance(pair, KeypointPair) and pair.category == "cat"
    assert pair.target_kps.tolist() == [[5.0, 6.0], [7.0, 8.0]] and pair.target_bbox.tolist() == [1, 1, 12, 9]
    del ann["trg_kps"]
    (tmp_path / "PairAnnotation" / "test" / "000001-a-b:cat.json").write_text(json.dumps(ann))
    with pytest.raises(DatasetError, match="lacks fields \\['trg_kps'\\]"):
        SPair71k(tmp_path)[0]


def test_davis_2017_palette_and_2016_binary(tmp_path: Path) -> None:
    for t in range(3):
        _rgb(tmp_path / "JPEGImages" / "480p" / "dog" / f"{t:05d}.jpg", seed=t)
        lab = np.zeros((16, 20), np.uint8)
        lab[2:6, t:t + 4] = 1
        lab[10:14, 10:14] = 2
        _palette(tmp_path / "Annotations" / "480p" / "dog" / f"{t:05d}.png", lab)
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("dog\n")
    clip = DAVIS(tmp_path)[0]
    assert isinstance(clip, VideoClip) and clip.masks.shape == (3, 16, 20) and clip.object_ids == [1, 2]
    assert len(clip.frames) == 3 and int((clip.masks[2] == 1).sum()) == 16
    assert len(DAVIS(tmp_path, max_frames=2)[0].frames) == 2
    for t in range(3):
        Image.fromarray(np.where(np.arange(20)[None].repeat(16, 0) > 9, 255, 0).astype(np.uint8)).save(
            tmp_path / "Annotations" / "480p" / "dog" / f"{t:05d}.png")
    clip16 = DAVIS(tmp_path)[0]
    assert clip16.object_ids == [1] and int(clip16.masks[0].sum()) == 16 * 10


@pytest.mark.skipif(not (SHARED / "davis2016_val_samples").is_dir(), reason="optional real-data smoke check")
def test_davis_real_sample_smoke() -> None:
    clip = DAVIS(SHARED / "davis2016_val_samples", max_frames=3)[0]
    assert clip.object_ids == [1] and clip.masks.shape[0] == 3 and clip.frames[0].size == (854, 480)


@pytest.mark.parametrize("task", sorted(SYNTHETIC))
def test_synthetic_generators_are_deterministic_and_exact(task: str) -> None:
    gen = SYNTHETIC[task](n=3, seed=4)
    assert gen.task == task and len(gen) == 3
    a, b = gen[2], SYNTHETIC[task](n=3, seed=4)[2]
    samples = {"fewshot": lambda x: x.support + [x.query], "coseg": lambda x: x.samples,
               "semantic": lambda x: [x], "referring": lambda x: [x]}
    if task in samples:
        for s, t in zip(samples[task](a), samples[task](b)):
            assert torch.equal(s.mask, t.mask) and s.image.tobytes() == t.image.tobytes()
            assert 0 < int(s.mask.sum()) < s.mask.numel()
            px = np.asarray(s.image)[s.mask.numpy()]
            colour = np.array(COLORS[s.text.split()[1]]) if task == "referring" else None
            assert (px == px[0]).all() if colour is None else (px == colour).all()  # mask = one solid shape
    with pytest.raises(IndexError):
        gen[3]


def test_synthetic_keypoints_follow_the_warp() -> None:
    for warp in ("identity", "affine"):
        for pair in SyntheticKeypointPairs(n=4, warp=warp):
            src, trg = np.asarray(pair.source), np.asarray(pair.target)
            for (xs, ys), (xt, yt) in zip(pair.source_kps.round().long().tolist(), pair.target_kps.tolist()):
                # a keypoint inside the shape lands on the shape's colour (allow bilinear edge blending)
                assert np.abs(src[ys, xs].astype(int) - trg[int(yt), int(xt)].astype(int)).max() <= 60
            if warp == "identity":
                assert torch.equal(pair.source_kps, pair.target_kps) and src.tobytes() == trg.tobytes()


def test_synthetic_clip_objects_move() -> None:
    clip = SyntheticClips(n=1, frames=5)[0]
    assert clip.masks.shape == (5, 64, 64) and clip.object_ids == [1, 2]
    assert not torch.equal(clip.masks[0], clip.masks[-1])


@pytest.mark.skipif(not (SHARED / "voc2012_val_samples_vainf" / "labels").is_dir(),
                    reason="optional real-data smoke check")
def test_pascal5i_on_real_voc_samples_rebuilt_in_native_layout(tmp_path: Path) -> None:
    src = SHARED / "voc2012_val_samples_vainf"
    ids = [p.stem for p in sorted((src / "labels").glob("*.png"))]
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for i in ids:
        Image.open(src / "images" / f"{i}.png").convert("RGB").save(root / "JPEGImages" / f"{i}.jpg")
        (root / "SegmentationClass" / f"{i}.png").symlink_to(src / "labels" / f"{i}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids))
    ds = Pascal5i(root, fold=0, shots=1)  # fold 0 holds aeroplane (4 samples), bicycle, bird (2 each)...
    names = {ds[i].class_name for i in range(len(ds))}
    assert {"aeroplane", "bird"} <= names
    ep = ds[0]
    assert ep.query.mask.any() and ep.query.mask.shape == (513, 513)
