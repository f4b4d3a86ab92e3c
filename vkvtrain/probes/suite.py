"""Run the probe suite on one model: data -> features -> layer-wise metrics -> ``{task: {metric: {row: value}}}``."""

from __future__ import annotations

from typing import Any, Sequence

from vkvtrain.data.perception import LOADERS
from vkvtrain.errors import RecipeError
from vkvtrain.mlm import MLM
from vkvtrain.probes.config import ProbeConfig
from vkvtrain.probes.encoder import VisionEncoder
from vkvtrain.probes.features import FeatureExtractor
from vkvtrain.probes.key_images import default_key_image_size
from vkvtrain.probes.runners import Table, TaskContext
from vkvtrain.probes.tasks import REGISTRY

Results = dict[str, Table]


def make_dataset(task: str, cfg: ProbeConfig) -> Any:
    """The dataset of ``task`` as configured in ``cfg.data[task]`` (synthetic by default; the config has
    checked that the source serves the task)."""
    spec = cfg.data[task]
    try:
        if spec.source == "synthetic":
            return REGISTRY[task].synthetic(n=spec.n, size=cfg.image_size, seed=cfg.seed, **spec.options)
        return LOADERS[spec.source](spec.root, limit=spec.n, **spec.options)
    except TypeError as err:  # an option the generator or loader does not take
        raise RecipeError(f"data.{task}.options {spec.options} do not fit source {spec.source!r}: {err}") from err


class ProbeSuite:
    """All configured probes for one MLM (and an optional baseline encoder).

    Args:
        mlm: the model. cfg: the probe config. encoder: the un-finetuned encoder baseline (row ``encoder``).
        shuffle_seed: run the shuffled-tokens control with this seed (None: the tokens as they are).
    """

    def __init__(self, mlm: MLM, cfg: ProbeConfig, encoder: VisionEncoder | None = None,
                 shuffle_seed: int | None = None) -> None:
        self.mlm, self.cfg = mlm, cfg
        self.fx = FeatureExtractor(mlm, cfg.layers, cfg.sources, encoder, cfg.batch_size, shuffle_seed=shuffle_seed)
        self.rows = self.fx.rows
        key_size = cfg.key_image_size if cfg.key_image_size is not None else \
            default_key_image_size(mlm.processor.image_processor)
        self.context = TaskContext(self.fx, cfg.probe, self.prefix, cfg.batch_size, key_size, name=mlm.name,
                                   progress=cfg.progress)

    @property
    def extras(self) -> dict[str, Any]:
        """Per-task extra outputs of the last run (e.g. the flagged key positions)."""
        return self.context.extras

    def prefix(self, task: str, text: str | None = None) -> str | None:
        """The prompt text placed before the image for ``task`` (``text``: the sample's class or expression)."""
        p = self.cfg.prefix
        if p.mode == "none":
            return None
        if p.mode == "generic":
            return p.generic
        return p.task.get(task, p.generic).format(text=text or "the object")

    def run(self, tasks: Sequence[str] | None = None) -> Results:
        """``{task: {metric: {row: value}}}``; rows without a value for a task (no text) hold NaN."""
        return {task: self.run_on(task, make_dataset(task, self.cfg)) for task in tasks or self.cfg.tasks}

    def run_on(self, task: str, dataset: Any) -> dict[str, dict[str, float]]:
        """``{metric: {row: value}}`` of ``task`` on ``dataset`` (any items of the task's schema, e.g. a
        synthetic world's exact-mask data)."""
        if task not in REGISTRY:
            raise RecipeError(f"unknown task {task!r}; choose from {list(REGISTRY)}")
        return REGISTRY[task].run(self.context, dataset)
