"""Attention blocking: no query may attend to flagged image key positions in chosen LM layers.

Positions are token indices inside each image's span (0 = first image token; the base grid comes first),
shared by all images of a prompt, and apply to all heads (all query heads of every GQA group). A forward
pre-hook on each chosen layer's ``self_attn`` rewrites the ``attention_mask`` kwarg, which is what both the
eager and the sdpa attention functions consume: sdpa receives a bool mask (True = attend) or None (plain
causal), eager an additive float mask (0 or the dtype's minimum). A flagged key stays visible to its own
query only, so no row of the mask becomes empty.

Positions come from a recipe (``positions``), or are chosen at calibration time as the ``top_k`` most
input-agnostic key positions per layer (``calibrate``; see interventions.key_artifacts). The control
``selection="random"`` blocks ``top_k`` uniformly drawn positions per layer instead (seeded), so a gain from
blocking artifacts can be told apart from a gain from blocking any that many keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from vkvtrain.errors import RecipeError
from vkvtrain.interventions.base import Intervention
from vkvtrain.interventions.key_artifacts import layer_keys
from vkvtrain.layers import resolve_layers
from vkvtrain.mlm import MLM
from vkvtrain.models.base import submodule
from vkvtrain.probes.functional import input_agnosticism
from vkvtrain.prompts import EncodedBatch, image_runs


def block_mask(
    mask: torch.Tensor | None,
    blocked: torch.Tensor,
    q_len: int,
    past_len: int,
) -> torch.Tensor:
    """Combine a layer's attention mask with a key block list.

    Args:
        mask: (B, 1|H, Q, K) bool (True = attend) or float additive mask, or None (causal, no padding).
        blocked: (B, K) bool, True at absolute key positions nobody may attend to (but themselves).
        q_len: Q; past_len: number of cached positions before the first query (K = past_len + Q).
    Returns:
        a mask of the input's kind ((B, 1, Q, K), bool when ``mask`` is None or bool).
    """
    batch, k_len = blocked.shape
    device = blocked.device
    q_pos = torch.arange(q_len, device=device) + past_len  # (Q,) absolute query positions
    k_pos = torch.arange(k_len, device=device)  # (K,)
    keep_self = q_pos[:, None] == k_pos[None, :]  # (Q, K)
    forbid = blocked[:, None, None, :] & ~keep_self[None, None]  # (B, 1, Q, K)
    if mask is None:
        causal = k_pos[None, :] <= q_pos[:, None]  # (Q, K)
        return causal[None, None] & ~forbid
    if mask.shape[-1] > k_len:  # a static cache's mask is wider than the keys seen so far
        forbid = torch.nn.functional.pad(forbid, (0, mask.shape[-1] - k_len))
    if mask.dtype == torch.bool:
        return mask & ~forbid
    return mask.masked_fill(forbid, torch.finfo(mask.dtype).min)


def _largest_same_grid_group(parts: list[torch.Tensor]) -> torch.Tensor | None:
    """Stack the (M_i, N, d) key groups of the most common span length N (images of other sizes, e.g.
    Qwen2.5-VL's dynamic resolution, have other positions); (M, N, d) or None when there are none."""
    if not parts:
        return None
    sizes: Counter[int] = Counter()
    for part in parts:
        sizes[part.shape[1]] += part.shape[0]
    n_tokens = sizes.most_common(1)[0][0]
    return torch.cat([part for part in parts if part.shape[1] == n_tokens])


class AttentionBlocking(Intervention):
    """Block attention to flagged image key positions in chosen LM layers (all heads).

    Args:
        layers: LM layer indices (negative counts from the end).
        positions: span-relative token indices to block, for every chosen layer. Leave None to have
            ``calibrate`` pick the ``top_k`` most input-agnostic positions of each layer.
        top_k: positions per layer chosen by calibration.
        selection: "agnostic" (the most input-agnostic keys) or "random" (the control: ``top_k`` positions
            drawn uniformly from the image span, per layer, with ``seed``).
    """

    def __init__(self, layers: list[int], positions: list[int] | None = None, top_k: int = 4,
                 selection: Literal["agnostic", "random"] = "agnostic", seed: int = 0) -> None:
        super().__init__()
        if not layers:
            raise RecipeError("AttentionBlocking.layers is empty; name at least one LM layer.")
        if selection not in ("agnostic", "random"):
            raise RecipeError(f"AttentionBlocking.selection {selection!r} is unknown; use 'agnostic' or 'random'.")
        self.layers = list(layers)
        self.top_k = top_k
        self.selection = selection
        self.seed = seed
        self._resolved: list[int] = []
        # (len(layers), K) span-relative positions per resolved layer; -1 pads; empty until known.
        self.positions: torch.Tensor
        self.register_buffer("positions", torch.empty(0, 0, dtype=torch.long))
        self._given = None if positions is None else sorted(set(int(p) for p in positions))
        self._blocked: torch.Tensor | None = None
        self._enabled = True

    @property
    def needs_calibration(self) -> bool:
        return self.positions.numel() == 0

    def attach(self, mlm: MLM) -> None:
        super().attach(mlm)
        self._resolved = resolve_layers(self.layers, mlm.num_layers, type(self).__name__)
        if self._given is not None and self.positions.numel() == 0:
            self.positions = torch.tensor([self._given] * len(self._resolved), dtype=torch.long)
        inner = submodule(mlm.model, "model")
        self._hooks.append(inner.register_forward_pre_hook(self._on_model_inputs, with_kwargs=True))
        decoder_layers = mlm.decoder_layers()
        for row, layer in enumerate(self._resolved):
            attn = decoder_layers[layer].get_submodule("self_attn")
            self._hooks.append(attn.register_forward_pre_hook(self._hook(row), with_kwargs=True))

    def set_positions(self, per_layer: dict[int, list[int]]) -> None:
        """Set span-relative positions per (resolved) layer index."""
        width = max(1, max(len(v) for v in per_layer.values()))
        rows = [list(per_layer.get(layer, [])) + [-1] * (width - len(per_layer.get(layer, [])))
                for layer in self._resolved]
        self.positions = torch.tensor(rows, dtype=torch.long, device=self.positions.device)

    def blocked_positions(self) -> dict[int, list[int]]:
        """Span-relative blocked positions per resolved layer."""
        return {layer: [int(p) for p in self.positions[r] if p >= 0] for r, layer in enumerate(self._resolved)}

    def record(self) -> dict[str, Any]:
        """The spec plus the positions actually blocked (given or calibrated), per layer."""
        return {**self.spec(), "blocked_positions": {str(k): v for k, v in self.blocked_positions().items()}}

    @torch.no_grad()
    def calibrate(self, mlm: MLM, batches: Sequence[EncodedBatch]) -> dict[int, list[int]]:
        """Pick the ``top_k`` most input-agnostic key positions per layer (``probes.input_agnosticism``), or
        ``top_k`` random ones per layer for ``selection="random"``.

        ``batches`` are encoded batches (``mlm.encode`` output) holding >= 2 same-grid images in total.
        Keys are read as cached (post-RoPE), as attention sees them.
        """
        keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in self._resolved}
        was_enabled, self._enabled = self._enabled, False  # calibrate on the unblocked model
        try:
            for batch in batches:
                with mlm.capture(layers=self._resolved) as kv:
                    mlm.model(**batch.inputs)
                for layer in self._resolved:
                    k = layer_keys(kv, batch, layer, "keys", min_images=1)
                    if k is not None:
                        keys[layer].append(k)
        finally:
            self._enabled = was_enabled
        chosen = {}
        generator = torch.Generator().manual_seed(self.seed)
        for layer, parts in keys.items():
            stacked = _largest_same_grid_group(parts)
            if stacked is None or stacked.shape[0] < 2:
                raise RecipeError("AttentionBlocking.calibrate needs >= 2 same-grid images; give more batches.")
            n_positions, n_pick = stacked.shape[1], min(self.top_k, stacked.shape[1])
            if self.selection == "random":
                chosen[layer] = sorted(torch.randperm(n_positions, generator=generator)[:n_pick].tolist())
            else:
                chosen[layer] = sorted(input_agnosticism(stacked).topk(n_pick).indices.tolist())
        self.set_positions(chosen)
        return chosen

    def _on_model_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Turn span-relative positions into (n_layers, B, L) absolute key masks for this forward."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None or not self._enabled:
            self._blocked = None
            return
        image_id = self.mlm.image_token_id
        if not bool((input_ids == image_id).any()):
            cache = kwargs.get("past_key_values")
            if cache is None or int(cache.get_seq_length()) == 0:
                self._blocked = None  # a text-only prompt
            return  # decoding / scoring a continuation on a cached prompt keeps the prompt's mask
        if self.positions.numel() == 0:
            raise RecipeError("AttentionBlocking has no positions: give `positions` or run calibrate() first.")
        blocked = torch.zeros(len(self._resolved), *input_ids.shape, dtype=torch.bool, device=input_ids.device)
        positions = self.positions.to(input_ids.device)
        for b, runs in enumerate(image_runs(input_ids, image_id)):
            for start, stop in runs:
                for r in range(len(self._resolved)):
                    rel = positions[r]
                    rel = rel[(rel >= 0) & (rel < stop - start)]
                    blocked[r, b, start + rel] = True
        self._blocked = blocked

    def _hook(self, row: int) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if self._blocked is None:
                return args, kwargs
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            assert isinstance(hidden, torch.Tensor)
            q_len = hidden.shape[1]
            cache = kwargs.get("past_key_values")
            past_len = 0
            if cache is not None and getattr(module, "layer_idx", None) is not None:
                past_len = int(cache.get_seq_length(module.layer_idx))
            blocked = self._blocked[row]
            k_len = past_len + q_len
            if blocked.shape[1] < k_len:  # generated tokens beyond the prompt are never blocked
                blocked = torch.nn.functional.pad(blocked, (0, k_len - blocked.shape[1]))
            kwargs["attention_mask"] = block_mask(
                kwargs.get("attention_mask"), blocked[:, :k_len], q_len, past_len
            )
            return args, kwargs

        return hook

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {"positions": self.positions.detach().clone()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.positions = state["positions"].clone().to(self.positions.device)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "positions"
        if key in state_dict:
            self.positions = torch.empty_like(state_dict[key], device=self.positions.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def init_args(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "positions": self._given, "top_k": self.top_k,
                "selection": self.selection, "seed": self.seed}
