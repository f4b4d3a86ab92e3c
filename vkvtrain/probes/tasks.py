"""The probe-task registry: one record per task, the only place a task is defined.

Adding a task means writing its runner (:mod:`vkvtrain.probes.runners`) and adding one :class:`ProbeTask`
record to :data:`REGISTRY`; the config, the suite, the reports and the training module's ``probe_tasks`` all
read this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from vkvtrain.data.perception.schema import PerceptionDataset
from vkvtrain.data.synthetic_perception import (
    SyntheticClips,
    SyntheticCoseg,
    SyntheticFewShot,
    SyntheticKeypointPairs,
    SyntheticReferring,
    SyntheticSemantic,
)
from vkvtrain.probes import runners
from vkvtrain.probes.agnosticism import KeyInputAgnosticism
from vkvtrain.probes.base import LayerwiseMetric
from vkvtrain.probes.correspondence import (
    KeypointCorrespondence,
    TemporalCorrespondence,
)
from vkvtrain.probes.runners import Table, TaskContext
from vkvtrain.probes.segmentation import (
    CoSegmentation,
    FewShotSegmentation,
    TextGroundedSegmentation,
)


@dataclass(frozen=True)
class ProbeTask:
    """One probe task.

    Args:
        name: the task's name in configs and reports.
        metric: the layer-wise metric class the runner fills.
        primary: the ``compute()`` key shown in tables, heatmaps and the input-embedding correlation.
        default_prefix: the task's prompt prefix under ``prefix.mode: task`` (``{text}`` = class name or
            expression).
        loader: the name of the real-data loader (``vkvtrain.data.perception.LOADERS``) that serves the task;
            None = any loader's images will do.
        synthetic: the generator of synthetic items with exact ground truth (``n``, ``size``, ``seed`` keywords).
        runner: ``(context, dataset, metric class) -> {metric: {row: value}}``.
        correlates: whether the primary score enters the input-embedding vs perception-score correlation (a
            perception score; a diagnostic does not).
    """

    name: str
    metric: type[LayerwiseMetric]
    primary: str
    default_prefix: str
    loader: str | None
    synthetic: Callable[..., PerceptionDataset[Any]]
    runner: Callable[[TaskContext, Any, Any], Table]
    correlates: bool = True

    def run(self, context: TaskContext, dataset: Any) -> Table:
        """The task's table on ``dataset``."""
        return self.runner(context, dataset, self.metric)


REGISTRY: dict[str, ProbeTask] = {task.name: task for task in (
    ProbeTask("fewshot", FewShotSegmentation, "miou", "Segment the main object in the next image.",
              "pascal5i", SyntheticFewShot, runners.run_fewshot),
    ProbeTask("coseg", CoSegmentation, "jaccard", "Find the object this image shares with other images.",
              "msrc", SyntheticCoseg, runners.run_coseg),
    ProbeTask("semantic", TextGroundedSegmentation, "miou", "Find every {text} in the next image.",
              "imagenet_s", SyntheticSemantic, runners.run_semantic),
    ProbeTask("referring", TextGroundedSegmentation, "miou", "Find {text} in the next image.",
              "refcoco", SyntheticReferring, runners.run_referring),
    ProbeTask("keypoints", KeypointCorrespondence, "pck", "Look at the parts of the object in the next image.",
              "spair71k", SyntheticKeypointPairs, runners.run_keypoints),
    ProbeTask("temporal", TemporalCorrespondence, "jf", "Track the moving objects in the next video frame.",
              "davis", SyntheticClips, runners.run_temporal),
    ProbeTask("key_agnosticism", KeyInputAgnosticism, "score", "Look at the next image.",
              None, SyntheticSemantic, runners.run_key_agnosticism, correlates=False),
)}

#: every task name, in table order
TASKS: tuple[str, ...] = tuple(REGISTRY)
