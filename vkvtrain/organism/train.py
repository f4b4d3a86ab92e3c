"""The organism's two training stages, as real MLMs are trained.

Stage a (vision pretraining): the vision tower alone, with small linear heads on its patch features, learns
dense per-token targets over random scenes of the world: each token's share of every kind, part, colour and
texture (soft cross-entropy) and whether it holds an object's centre (binary), and per image the number of objects
(from the mean token, as image-level pretraining gives CLIP/SigLIP tokens global context). Some images carry
BLINK-style point markers drawn over them (the targets describe the scene under the markers), so the features see
through markers.
The heads are dropped afterwards.

Stage b (instruction tuning): the vision tower, the projector and the LM's layer-0 value projection frozen, the LM
learns the taught question types (:data:`~vkvtrain.organism.questions.TAUGHT`) in the family's chat template, with
vkvtrain's own prompt encoding and the answer-only loss (:func:`vkvtrain.answer_loss.answer_forward`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from vkvtrain.data.blink import LETTERS
from vkvtrain.errors import UnsupportedModelError
from vkvtrain.evaluation.protocol import PromptProtocol
from vkvtrain.mlm import MLM
from vkvtrain.models.base import hf_config, unwrap_model
from vkvtrain.organism.questions import (
    MAX_COUNT,
    ORGANISM_PROTOCOL,
    TAUGHT,
    mark_points,
    taught_questions,
)
from vkvtrain.organism.world import (
    COLOUR_NAMES,
    GRID,
    KINDS,
    PARTS,
    TEXTURES,
    Scene,
    cell_fractions,
    cell_of,
    random_scene,
)
from vkvtrain.answer_loss import answer_forward, output_correct
from vkvtrain.prompts import Prompt

#: dense heads: name -> number of classes (soft cross-entropy over tokens), plus the binary centre head
DENSE_HEADS = {"kind": len(KINDS) + 1, "part": len(PARTS) + 1, "colour": len(COLOUR_NAMES) + 1,
               "texture": len(TEXTURES) + 1}
MARK_LABELS = ("REF", "A", "B", "C", "D")
#: loss weight per head (others 1): parts need context and are the slowest to learn; the image-level count
#: at 1.0 took capacity from the tokens (kind loss 0.30 -> 0.44, taught shape 62%), at 0.2 it does not
HEAD_WEIGHTS = {"part": 2.0, "count": 0.2}
#: attribute weights of the token-similarity target (colour left out: a nuisance for every probe)
SIMILARITY_WEIGHTS = {"kind": 0.2, "part": 0.3, "texture": 0.2, "uv": 0.3}
UV_SCALE = 0.5  # object-frame distance (box half-sides) at which the uv similarity falls to 1/e
MARKER_SHARE = 0.3  # share of stage-a images with point markers drawn over them
#: stage b cycles through these (shape, pattern and count twice: they are the slowest to learn)
QA_CYCLE: tuple[str, ...] = (*TAUGHT, "shape", "pattern", "count")


@dataclass
class StageConfig:
    """One stage's optimisation: steps, batch size, peak learning rate (linear warm-up, cosine decay)."""

    steps: int
    batch_size: int
    lr: float
    warmup: int = 20


def lr_at(step: int, cfg: StageConfig) -> float:
    """Learning rate of ``step``: linear warm-up over ``cfg.warmup`` steps, then cosine decay to 5%."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


# ------------------------------------------------------------------------------------------ stage a
def dense_targets(scene: Scene) -> dict[str, np.ndarray]:
    """Targets of one scene: per token, ``(GRID*GRID, C)`` shares per dense head, ``(GRID*GRID, 1)`` centre and
    ``(GRID*GRID, 2)`` the mean object-frame coordinates of the token's object pixels; per image, ``(1,
    MAX_COUNT)`` the one-hot number of objects."""
    lut = {
        "kind": [0] + [KINDS.index(o.kind) + 1 for o in scene.objects],
        "colour": [0] + [COLOUR_NAMES.index(o.colour) + 1 for o in scene.objects],
        "texture": [0] + [TEXTURES.index(o.texture) + 1 for o in scene.objects],
    }
    out = {name: cell_fractions(np.asarray(table)[scene.instances], DENSE_HEADS[name]).reshape(GRID * GRID, -1)
           for name, table in lut.items()}
    out["part"] = cell_fractions(scene.parts, DENSE_HEADS["part"]).reshape(GRID * GRID, -1)
    out["count"] = np.eye(MAX_COUNT, dtype=np.float32)[len(scene.objects) - 1][None]  # image-level target
    centre = np.zeros((GRID, GRID), np.float32)
    for o in scene.objects:
        centre[cell_of((o.cx / scene.size, o.cy / scene.size))] = 1.0
    out["centre"] = centre.reshape(GRID * GRID, 1)
    on = (scene.instances > 0).astype(np.float32)
    p = scene.size // GRID
    pixels = on.reshape(GRID, p, GRID, p).sum((1, 3))
    uv_sum = (scene.uv * on[..., None]).reshape(GRID, p, GRID, p, 2).sum((1, 3))
    out["uv"] = (uv_sum / np.maximum(pixels, 1)[..., None]).reshape(GRID * GRID, 2)  # mean over object pixels
    return out


def _with_markers(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The scene's pixels with 1-4 BLINK-style markers drawn at random points (half of them on objects)."""
    marks = {}
    for label in rng.choice(MARK_LABELS, int(rng.integers(1, 5)), replace=False):
        on = np.argwhere(scene.instances > 0)
        if len(on) and rng.random() < 0.5:
            y, x = on[int(rng.integers(len(on)))]
            marks[str(label)] = ((x + 0.5) / scene.size, (y + 0.5) / scene.size)
        else:
            marks[str(label)] = (float(rng.uniform(0.05, 0.95)), float(rng.uniform(0.05, 0.95)))
    return np.asarray(mark_points(Image.fromarray(scene.image, "RGB"), marks))


def vision_batches(seed: int, batch_size: int, marker_share: float = MARKER_SHARE
                   ) -> Iterator[tuple[np.ndarray, dict[str, Tensor]]]:
    """Endless batches of (images ``(B, S, S, 3)`` uint8, targets ``{head: (B, ...)}``) of random scenes.

    Scene sizes: 1 object (40%) or 2-4 objects; ``marker_share`` of the images carry markers.
    """
    rng = np.random.default_rng([seed, 1])
    while True:
        scenes = [random_scene(rng, n_objects=int(rng.choice([1, 1, 2, 3, 4]))) for _ in range(batch_size)]
        images = np.stack([_with_markers(s, rng) if rng.random() < marker_share else s.image for s in scenes])
        targets = [dense_targets(s) for s in scenes]
        yield images, {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in targets[0]}


def pixel_values(mlm: MLM, images: np.ndarray) -> Tensor:
    """``(B, 3, S, S)`` float: uint8 images ``(B, S, S, 3)`` normalised as the family's image processor does for
    an image already at the vision tower's size (rescale, then mean/std)."""
    proc: Any = getattr(mlm.processor, "image_processor")
    mean = torch.tensor(proc.image_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(proc.image_std, dtype=torch.float32)[:, None, None]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() * float(proc.rescale_factor)
    return (x - mean) / std


def vision_tower(mlm: MLM) -> nn.Module:
    """The vision tower of a LLaVA-family model (the module stage a trains and stage b freezes)."""
    inner = unwrap_model(mlm.model).model
    tower = getattr(inner, "vision_tower", None)
    if tower is None:
        raise UnsupportedModelError(
            f"the organism trains LLaVA-family vision towers (llava_onevision, llava_next); {mlm.family} has none."
        )
    return tower


def grid_features(mlm: MLM, pixels: Tensor) -> Tensor:
    """``(B, GRID*GRID, D_vision)`` patch features that the projector receives for the base crop.

    Follows the LLaVA classes' own selection: hidden state ``config.vision_feature_layer``, and the CLS token
    dropped under the ``"default"`` select strategy.
    """
    config = hf_config(mlm.model)
    out = vision_tower(mlm)(pixel_values=pixels, output_hidden_states=True)
    hidden = out.hidden_states[config.vision_feature_layer]
    return hidden[:, 1:] if config.vision_feature_select_strategy == "default" else hidden


class DenseHeads(nn.Module):
    """Linear heads on patch features: per-token class shares, object centre and object-frame coordinates, and the
    number of objects from the mean token."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.ModuleDict({k: nn.Linear(dim, n) for k, n in DENSE_HEADS.items()})
        self.centre = nn.Linear(dim, 1)
        self.uv = nn.Linear(dim, 2)
        self.count = nn.Linear(dim, MAX_COUNT)  # on the mean token: an image-level target

    def loss(self, feats: Tensor, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """``feats`` ``(B, N, D)``; returns one scalar loss per objective (heads, centre, similarity)."""
        out = {k: HEAD_WEIGHTS.get(k, 1.0) * soft_cross_entropy(head(feats), targets[k])
               for k, head in self.dense.items()}
        # centres are rare (<= 4 of 64 tokens): up-weight positives so the head does not learn "never"
        out["centre"] = F.binary_cross_entropy_with_logits(self.centre(feats), targets["centre"],
                                                           pos_weight=torch.tensor(8.0))
        on_object = 1 - targets["kind"][..., 0]  # (B, N) share of object pixels
        out["uv"] = ((self.uv(feats) - targets["uv"]).pow(2).sum(-1) * on_object).mean()
        # (B, MAX_COUNT) from the mean token
        out["count"] = HEAD_WEIGHTS["count"] * soft_cross_entropy(self.count(feats.mean(1)), targets["count"][:, 0])
        out["similarity"] = similarity_loss(feats, targets)
        return out


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits`` ``(..., C)`` against class shares ``targets`` ``(..., C)``."""
    return -(targets * logits.log_softmax(-1)).sum(-1).mean()


def similarity_loss(feats: Tensor, targets: dict[str, Tensor], n: int = 768) -> Tensor:
    """Mean squared gap between token cosine similarities and their attribute agreement.

    For ``n`` random tokens of the batch, the target similarity of tokens i, j is
    ``sum_k w_k * <share_k(i), share_k(j)>`` over the class heads of ``SIMILARITY_WEIGHTS`` (kind, part,
    texture; ``share_k`` the token's class shares of head k, background included), plus
    ``w_uv * obj(i) obj(j) exp(-|uv(i) - uv(j)|^2 / UV_SCALE^2)`` (object shares, object-frame coordinates: the
    same place on a shape, in any kind). This shapes the feature geometry itself, not only
    what linear heads can read: the same part of the same kind, in any colour, points the same way, and that
    structure survives the projector and the LM's value projection (which a linear read-out alone does not
    guarantee; see docs/ORGANISM.md).
    """
    B, N, D = feats.shape
    pick = torch.randperm(B * N)[:n]
    f = F.normalize(feats.reshape(B * N, D)[pick], dim=-1)
    target = torch.zeros(len(pick), len(pick))
    for k, w in SIMILARITY_WEIGHTS.items():
        if k == "uv":
            obj = 1 - targets["kind"].reshape(B * N, -1)[pick, 0]
            uv = targets["uv"].reshape(B * N, 2)[pick]
            target = target + w * obj[:, None] * obj[None] * torch.exp(-torch.cdist(uv, uv).pow(2) / UV_SCALE**2)
        else:
            share = targets[k].reshape(B * N, -1)[pick]
            target = target + w * (share @ share.T)
    return (f @ f.T - target).pow(2).mean()


def stage_a_recipe() -> dict[str, Any]:
    """What stage a's result depends on besides the seed, the sizes and the step budget: its targets and loss
    weights. Part of the stage-a cache key, so a changed recipe trains anew instead of resuming an older tower."""
    return {"heads": DENSE_HEADS, "head_weights": HEAD_WEIGHTS, "similarity": SIMILARITY_WEIGHTS,
            "uv_scale": UV_SCALE, "marker_share": MARKER_SHARE, "max_count": MAX_COUNT}


def train_vision(mlm: MLM, cfg: StageConfig, seed: int, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Stage a: train the vision tower (and throw-away heads) on the dense targets; returns final losses."""
    torch.manual_seed(seed)
    tower = vision_tower(mlm)
    feats_dim = int(hf_config(mlm.model).vision_config.hidden_size)
    heads = DenseHeads(feats_dim)
    params = [p for p in tower.parameters()] + list(heads.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    tower.train()
    batches = vision_batches(seed, cfg.batch_size)
    bar = tqdm(range(cfg.steps), desc="stage a: vision", disable=not progress, unit="step")
    last: dict[str, float] = {}
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        images, targets = next(batches)
        losses = heads.loss(grid_features(mlm, pixel_values(mlm, images)), targets)
        total = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[union-attr]
        opt.step()
        values = {k: float(v.detach()) for k, v in losses.items()}
        last = {k: 0.9 * last.get(k, v) + 0.1 * v for k, v in values.items()}
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(last.values()):.3f}")
    tower.eval()
    return last


# ------------------------------------------------------------------------------------------ stage b
def taught_stream(index: int) -> tuple[str, int]:
    """The taught type of training example ``index`` (:data:`QA_CYCLE` in turn) and its number within that type.

    Questions of a type are numbered 0, 1, 2, ... in the order they are trained on, so their answer letters
    (which cycle with the number) stay balanced whatever the cycle's length; numbering by ``index`` would tie
    them to the cycle (a 6-long cycle asks every colour question with answer A).
    """
    cycles, position = divmod(index, len(QA_CYCLE))
    name = QA_CYCLE[position]
    return name, cycles * QA_CYCLE.count(name) + QA_CYCLE[:position].count(name)


def taught_prompts(seed: int, step: int, batch_size: int, protocol: PromptProtocol) -> tuple[list[Prompt], list[str]]:
    """Training prompts with answers for ``step`` (the taught types in turn, from the ``train`` split's streams,
    asked and answered as ``protocol`` (the organism's, :data:`ORGANISM_PROTOCOL`) asks and scores) and their
    types."""
    prompts, names = [], []
    for j in range(batch_size):
        name, number = taught_stream(step * batch_size + j)
        q = taught_questions(1, seed, "train", [name], first=number)[0]
        answer = protocol.continuations(q)[LETTERS.index(str(q.answer))]
        prompts.append(Prompt(images=q.images, text=protocol.text(q), answer=answer))
        names.append(name)
    return prompts, names


def qa_parameters(mlm: MLM) -> list[nn.Parameter]:
    """What stage b trains: the LM (embeddings, decoder, head) but its layer-0 value projection. The vision tower and
    the projector stay frozen.

    A projector trained on a few taught question types keeps only what they need (colour, kind, texture, count)
    and squashes the rest (parts, places on a shape) out of the LM's input; even at a tenth of the LM's learning
    rate it cost the correspondence subtasks their latent signal (2 of 5 gap subtasks; frozen: 4 of 5,
    docs/ORGANISM.md). Frozen at its random init, the projector is a near-isometric map of the vision features, as
    a projector aligned on rich caption data is, and the LM learns to read it.

    The LM's first value projection stays frozen too, for the same reason one step further in: the layer-0 image
    values are what a latent probe reads, and trained on four question types they kept only what those need (the
    part-correspondence subtasks' latent accuracy fell from 71-73% to 43-46% with the weights otherwise equal). Frozen,
    they are a random, information-preserving map of the LM's input (the attention's output projection, the keys,
    queries and every later layer still train), as the value projections of an LM pretrained on text are not shaped
    by a few question types.
    """
    frozen = {id(p) for p in vision_tower(mlm).parameters()}
    frozen |= {id(p) for p in mlm.adapter.projector(mlm.model).parameters()}
    frozen |= {id(p) for p in mlm.adapter.decoder_layers(mlm.model)[0].get_submodule("self_attn.v_proj").parameters()}
    params = []
    for p in mlm.model.parameters():
        p.requires_grad_(id(p) not in frozen)
        if id(p) not in frozen:
            params.append(p)
    return params


def train_qa(mlm: MLM, cfg: StageConfig, seed: int, progress: bool = True) -> dict[str, float]:
    """Stage b: the LM on the taught questions (vision tower and projector frozen), answer-only loss; returns
    final stats."""
    torch.manual_seed(seed)
    protocol = ORGANISM_PROTOCOL
    params = qa_parameters(mlm)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    mlm.model.train()
    vision_tower(mlm).eval()
    bar = tqdm(range(cfg.steps), desc="stage b: taught QA", disable=not progress, unit="step")
    loss_avg: float | None = None
    accuracy: dict[str, float] = {}  # running answer accuracy per taught type
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        prompts, names = taught_prompts(seed, step, cfg.batch_size, protocol)
        step_out = answer_forward(mlm.model, mlm.encode(prompts).inputs)
        out, loss, window = step_out.output, step_out.loss, step_out.targets
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():  # would greedy decoding give the whole answer?
            right = output_correct(out.logits[:, :-1], window)
        for name, ok in zip(names, right.tolist()):
            accuracy[name] = 0.98 * accuracy.get(name, float(ok)) + 0.02 * float(ok)
        value = float(loss.detach())
        loss_avg = value if loss_avg is None else 0.95 * loss_avg + 0.05 * value
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_avg:.3f}", **{k[:4]: f"{v:.2f}" for k, v in accuracy.items()})
    mlm.model.eval()
    for p in mlm.model.parameters():
        p.requires_grad_(True)
    return {"loss": float(loss_avg or 0.0), **{f"train_accuracy_{k}": v for k, v in accuracy.items()}}
