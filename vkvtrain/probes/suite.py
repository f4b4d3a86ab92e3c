"""Run the probe suite on one model: data -> features -> layer-wise metrics -> ``{task: {metric: {row: value}}}``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from vkvtrain.data.perception import LOADERS
from vkvtrain.data.synthetic_perception import SYNTHETIC, SyntheticSemantic
from vkvtrain.errors import RecipeError
from vkvtrain.probes.agnosticism import KeyInputAgnosticism
from vkvtrain.probes.config import ProbeConfig
from vkvtrain.probes.correspondence import KeypointCorrespondence, TemporalCorrespondence
from vkvtrain.probes.features import FeatureExtractor, ImageFeatures
from vkvtrain.probes.segmentation import CoSegmentation, FewShotSegmentation, TextGroundedSegmentation

if TYPE_CHECKING:
    from vkvtrain.mlm import MLM
    from vkvtrain.probes.encoder import VisionEncoder

#: which real loader serves which task
TASK_LOADERS = {"fewshot": "pascal5i", "coseg": "msrc", "semantic": "imagenet_s", "referring": "refcoco",
                "keypoints": "spair71k", "temporal": "davis"}

Results = dict[str, dict[str, dict[str, float]]]


def make_dataset(task: str, cfg: ProbeConfig) -> Any:
    """The dataset of ``task`` as configured in ``cfg.data[task]`` (synthetic by default)."""
    spec = cfg.data[task]
    if task == "key_agnosticism" and spec.source == "synthetic":
        return SyntheticSemantic(n=spec.n, size=cfg.image_size, seed=cfg.seed, **spec.options)
    if spec.source == "synthetic":
        return SYNTHETIC[task](n=spec.n, size=cfg.image_size, seed=cfg.seed, **spec.options)
    if spec.source not in LOADERS:
        raise RecipeError(f"data.{task}.source {spec.source!r} is unknown; use synthetic or one of {sorted(LOADERS)}")
    if task != "key_agnosticism" and TASK_LOADERS[task] != spec.source:
        raise RecipeError(f"data.{task}.source {spec.source!r} does not serve {task}; use {TASK_LOADERS[task]!r}")
    if not spec.root:
        raise RecipeError(f"data.{task}.root is required for source {spec.source!r}")
    return LOADERS[spec.source](spec.root, limit=spec.n, **spec.options)


class ProbeSuite:
    """All configured probes for one MLM (and optional baseline encoder)."""

    def __init__(self, mlm: MLM, cfg: ProbeConfig, encoder: VisionEncoder | None = None) -> None:
        self.mlm, self.cfg = mlm, cfg
        self.fx = FeatureExtractor(mlm, cfg.layers, cfg.sources, encoder, cfg.batch_size)
        self.rows = self.fx.rows
        self.text_rows = [r for r in self.rows if r not in ("vision", "encoder")]
        self.extras: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------ helpers
    def prefix(self, task: str, text: str | None = None) -> str | None:
        p = self.cfg.prefix
        if p.mode == "none":
            return None
        if p.mode == "generic":
            return p.generic
        return p.task.get(task, p.generic).format(text=text or "the object")

    def _grids(self, feats: ImageFeatures, rows: Sequence[str] | None = None) -> list[torch.Tensor]:
        return [feats.rows[r] for r in (rows or self.rows)]

    def _progress(self, items: Iterable[Any], total: int, task: str) -> Iterable[Any]:
        return tqdm(items, total=total, desc=f"{self.mlm.name}:{task}", disable=not self.cfg.progress, leave=False)

    @staticmethod
    def _size(image: Image.Image) -> tuple[int, int]:
        return image.size[1], image.size[0]

    # ------------------------------------------------------------------------------------ tasks
    def run(self, tasks: Sequence[str] | None = None) -> Results:
        """``{task: {metric: {row: value}}}``; rows without a value for a task (no text) hold NaN."""
        out: Results = {}
        for task in tasks or self.cfg.tasks:
            runner: Callable[[Any], dict[str, dict[str, float]]] = getattr(self, f"_run_{task}")
            out[task] = runner(make_dataset(task, self.cfg))
        return out

    def _table(self, result: dict[str, torch.Tensor], rows: Sequence[str]) -> dict[str, dict[str, float]]:
        return {key: {r: (float(val[rows.index(r)]) if r in rows else math.nan) for r in self.rows}
                for key, val in result.items() if val.dim() == 1}

    def _run_fewshot(self, ds: Any) -> dict[str, dict[str, float]]:
        o = self.cfg.probe
        metric = FewShotSegmentation(len(self.rows), num_classes=getattr(ds, "num_classes", 21), c=o.fewshot_c,
                                     upsample=o.upsample, layer_names=self.rows)
        for ep in self._progress(ds, len(ds), "fewshot"):
            samples = ep.support + [ep.query]
            feats = self.fx([s.image for s in samples], prefixes=[self.prefix("fewshot", ep.class_name)] * len(samples))
            metric.update([self._grids(f) for f in feats[:-1]], [s.mask for s in ep.support], self._grids(feats[-1]),
                          ep.query.mask, ep.class_id, support_ignore=[s.ignore for s in ep.support],
                          query_ignore=ep.query.ignore)
        return self._table(metric.compute(), self.rows)

    def _run_coseg(self, ds: Any) -> dict[str, dict[str, float]]:
        o = self.cfg.probe
        metric = CoSegmentation(len(self.rows), k=o.coseg_k, upsample=o.upsample, layer_names=self.rows)
        for group in self._progress(ds, len(ds), "coseg"):
            feats = self.fx([s.image for s in group.samples], prefixes=[self.prefix("coseg")] * len(group.samples))
            metric.update([self._grids(f) for f in feats], [s.mask for s in group.samples])
        return self._table(metric.compute(), self.rows)

    def _grounding(self, ds: Any, task: str, num_classes: int | None) -> dict[str, dict[str, float]]:
        o = self.cfg.probe
        if not self.text_rows:
            return {"miou": {r: math.nan for r in self.rows}, "ciou": {r: math.nan for r in self.rows}}
        metric = TextGroundedSegmentation(len(self.text_rows), num_classes=num_classes,
                                          threshold=o.grounding_threshold, upsample=o.upsample,  # type: ignore[arg-type]
                                          layer_names=self.text_rows)
        bs = self.cfg.batch_size
        pbar = tqdm(total=len(ds), desc=f"{self.mlm.name}:{task}", disable=not self.cfg.progress, leave=False)
        for start in range(0, len(ds), bs):
            samples = [ds[i] for i in range(start, min(start + bs, len(ds)))]
            feats = self.fx([s.image for s in samples], texts=[s.text or s.class_name for s in samples],
                            prefixes=[self.prefix(task, s.text) for s in samples])
            for s, f in zip(samples, feats):
                metric.update([f.text[r] for r in self.text_rows], self._grids(f, self.text_rows), s.mask,
                              class_id=s.class_id if num_classes else None, ignore=s.ignore)
            pbar.update(len(samples))
        pbar.close()
        return self._table(metric.compute(), self.text_rows)

    def _run_semantic(self, ds: Any) -> dict[str, dict[str, float]]:
        return self._grounding(ds, "semantic", getattr(ds, "num_classes", 1001))

    def _run_referring(self, ds: Any) -> dict[str, dict[str, float]]:
        return self._grounding(ds, "referring", None)

    def _run_keypoints(self, ds: Any) -> dict[str, dict[str, float]]:
        o = self.cfg.probe
        metric = KeypointCorrespondence(len(self.rows), alpha=o.pck_alpha, normalize=o.pck_normalize,
                                        layer_names=self.rows)
        for pair in self._progress(ds, len(ds), "keypoints"):
            src, trg = self.fx([pair.source, pair.target], prefixes=[self.prefix("keypoints", pair.category)] * 2)
            metric.update(self._grids(src), self._grids(trg), pair.source_kps, pair.target_kps,
                          self._size(pair.source), self._size(pair.target), trg_bbox=pair.target_bbox)
        return self._table(metric.compute(), self.rows)

    def _run_temporal(self, ds: Any) -> dict[str, dict[str, float]]:
        o = self.cfg.probe
        metric = TemporalCorrespondence(len(self.rows), n_context=o.temporal_context, topk=o.temporal_topk,
                                        temperature=o.temporal_temperature, upsample=o.upsample,
                                        layer_names=self.rows)
        for clip in self._progress(ds, len(ds), "temporal"):
            feats = self.fx(clip.frames, prefixes=[self.prefix("temporal")] * len(clip.frames))
            metric.update([self._grids(f) for f in feats], clip.masks)
        return self._table(metric.compute(), self.rows)

    def _run_key_agnosticism(self, ds: Any) -> dict[str, dict[str, float]]:
        """Keys of ``key_images`` images, resized to one size so every image has the same positions."""
        o, size = self.cfg.probe, self.cfg.image_size
        images = []
        for i in range(len(ds)):
            item = ds[i]
            image = getattr(item, "image", None) or getattr(getattr(item, "query", None), "image", None) \
                or getattr(item, "source", None) or item.frames[0]
            images.append(image.resize((size, size)))
            if len(images) >= o.key_images:
                break
        if len(images) < 2:
            raise RecipeError("key_agnosticism needs >= 2 images; raise data.key_agnosticism.n")
        feats = self.fx(images, prefixes=[self.prefix("key_agnosticism")] * len(images), keys=True)
        layers = self.fx.layers
        keys = [torch.stack([f.keys[layer] for f in feats]) for layer in layers]  # each (n, N, kv_dim)
        names = [str(layer) for layer in layers]
        metric = KeyInputAgnosticism(len(layers), keys[0].shape[1], keys[0].shape[2], threshold=o.key_threshold,
                                     layer_names=names)
        metric.update(keys)
        res = metric.compute()
        self.extras["key_agnosticism"] = {
            "flagged": {n: res["flagged"][i].nonzero().flatten().tolist() for i, n in enumerate(names)},
            "agnosticism": {n: res["agnosticism"][i].tolist() for i, n in enumerate(names)},
        }
        table = {"score": res["score"], "n_flagged": res["n_flagged"].float()}
        return {key: {r: (float(v[names.index(r)]) if r in names else math.nan) for r in self.rows}
                for key, v in table.items()}
