"""SurfacingGap: how often a latent probe answers right while the model's output answers wrong.

For each subtask s and layer l, over the questions seen:

- ``gap_all[s, l]``   = #(probe right at l and output wrong) / #questions of s
- ``gap_wrong[s, l]`` = #(probe right at l and output wrong) / #questions of s the output got wrong
- ``probe_accuracy[s, l]`` = #(probe right at l) / #questions of s; ``output_accuracy[s]`` likewise.

The paper's Art_Style example (39 of 117 val questions) is ``gap_all``. States are fixed-size counts
(subtasks x layers) summed across processes. A ratio with an empty denominator is NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class SurfacingGap(Metric):
    """Counts, per subtask x layer, questions where the probe is right and the output is wrong.

    Args:
        num_subtasks: number of subtask ids (ids are 0..num_subtasks-1, e.g. BLINK_SUBTASKS order).
        num_layers: number of probed layers (columns of ``probe_correct``).

    Example:
        >>> import torch
        >>> m = SurfacingGap(num_subtasks=1, num_layers=2)
        >>> m.update(torch.tensor([0, 0]), torch.tensor([False, True]), torch.tensor([[True, False], [True, True]]))
        >>> m.compute()["gap_all"]
        tensor([[0.5000, 0.0000]])
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    total: Tensor
    output_wrong: Tensor
    probe_right: Tensor
    probe_right_output_wrong: Tensor

    def __init__(self, num_subtasks: int, num_layers: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_subtasks < 1 or num_layers < 1:
            raise ValueError(f"num_subtasks and num_layers must be >= 1, got {num_subtasks}, {num_layers}")
        self.num_subtasks, self.num_layers = num_subtasks, num_layers
        S, L = num_subtasks, num_layers
        self.add_state("total", torch.zeros(S, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("output_wrong", torch.zeros(S, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("probe_right", torch.zeros(S, L, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("probe_right_output_wrong", torch.zeros(S, L, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, subtask_ids: Tensor, output_correct: Tensor, probe_correct: Tensor) -> None:
        """Add a batch of B questions.

        Args:
            subtask_ids: (B,) integer subtask id of each question, in [0, num_subtasks).
            output_correct: (B,) bool, the model's answer (parsed or scored) is the gold one; an invalid
                answer counts as wrong.
            probe_correct: (B, num_layers) bool, the probe at each layer picks the gold choice.
        """
        subtask_ids = torch.as_tensor(subtask_ids, device=self.total.device).long()
        output_correct = torch.as_tensor(output_correct, device=self.total.device).bool()
        probe_correct = torch.as_tensor(probe_correct, device=self.total.device).bool()
        B = subtask_ids.shape[0]
        if subtask_ids.dim() != 1 or output_correct.shape != (B,) or probe_correct.shape != (B, self.num_layers):
            raise ValueError(
                "expected subtask_ids (B,), output_correct (B,), probe_correct (B, num_layers="
                f"{self.num_layers}); got {tuple(subtask_ids.shape)}, {tuple(output_correct.shape)}, "
                f"{tuple(probe_correct.shape)}"
            )
        if B and (subtask_ids.min() < 0 or subtask_ids.max() >= self.num_subtasks):
            raise ValueError(f"subtask_ids must lie in [0, {self.num_subtasks}), got {subtask_ids.tolist()}")
        onehot = torch.nn.functional.one_hot(subtask_ids, self.num_subtasks).long()  # (B, S)
        wrong = (~output_correct).long()  # (B,)
        probe = probe_correct.long()  # (B, L)
        self.total += onehot.sum(0)
        self.output_wrong += onehot.T @ wrong
        self.probe_right += onehot.T @ probe
        self.probe_right_output_wrong += onehot.T @ (probe * wrong[:, None])

    def compute(self) -> dict[str, Tensor]:
        """``gap_all``, ``gap_wrong``, ``probe_accuracy`` (S, L), ``output_accuracy`` (S,); NaN where empty."""
        total = self.total.double()
        wrong = self.output_wrong.double()
        both = self.probe_right_output_wrong.double()
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=total.device)

        def ratio(num: Tensor, den: Tensor) -> Tensor:
            return torch.where(den > 0, num / den.clamp(min=1), nan).float()

        return {
            "gap_all": ratio(both, total[:, None].expand_as(both)),
            "gap_wrong": ratio(both, wrong[:, None].expand_as(both)),
            "probe_accuracy": ratio(self.probe_right.double(), total[:, None].expand_as(both)),
            "output_accuracy": ratio(total - wrong, total),
        }
