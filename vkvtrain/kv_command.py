"""``python -m vkvtrain kv MODEL --image A.png [--image B.png] --out kv.safetensors``: one prompt's image
keys/values in the grid view, written to a safetensors file."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from vkvtrain.errors import RecipeError
from vkvtrain.images import load_image
from vkvtrain.layers import resolve_layers
from vkvtrain.models.loading import load_config, load_mlm
from vkvtrain.outcome import Outcome
from vkvtrain.outputs import check_writable_file, staged_file, verify_written
from vkvtrain.prompts import Prompt


def parse_layers(text: str | None) -> list[int] | None:
    """"0,3,-1" -> [0, 3, -1]; None or "all" -> None (every layer). An empty list or part is refused."""
    if text is None or text.strip() == "all":
        return None
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or not all(parts):
        raise RecipeError(f"--layers {text!r} names no layer (or has an empty part); give comma-separated LM "
                          "layers such as 0,3,-1, or leave --layers out for every layer.")
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise RecipeError(f"--layers {text!r} is not a comma-separated list of integers (e.g. 0,3,-1).") from None


def kv(
    model: str,
    image: list[str] | None = None,
    out: str | None = None,
    text: str = "",
    prefix: str | None = None,
    layers: str | None = None,
) -> Outcome:
    """Write one prompt's image keys/values (grid view) to a safetensors file.

    Tensors: input_ids (1, L); values.{layer}.{image}, keys.{layer}.{image} (post-RoPE) and
    keys_pre_rope.{layer}.{image}, each (H, W, n_kv_heads * head_dim). Metadata: family, model, layers, grid
    shapes and image token spans (JSON strings). Bad input writes nothing.

    Args:
        model: hub id, local folder or tiny://<family>.
        image: image file; repeat --image for several images (in prompt order).
        out: the .safetensors file to write (its folder is created).
        text: question placed after the image(s).
        prefix: text placed immediately before the image(s).
        layers: comma-separated LM layers, negative from the end (e.g. 0,3,-1); default: every layer.
    """
    if not image:
        raise RecipeError("kv needs at least one --image FILE.")
    if out is None:
        raise RecipeError("kv needs --out FILE (a .safetensors file to write).")
    target = check_writable_file(out, "--out")
    chosen = parse_layers(layers)
    pictures = [load_image(path) for path in image]
    n_layers = load_config(model).get_text_config().num_hidden_layers
    resolve_layers(chosen, n_layers, f"--layers of {model}")  # before the weights load
    mlm = load_mlm(model)
    batch = mlm.encode([Prompt(images=pictures, text=text, prefix=prefix)])
    with torch.no_grad(), mlm.capture(chosen) as captured:
        mlm.model(**batch.inputs)
    tensors = {"input_ids": batch.input_ids.contiguous()}
    for layer in captured.layers:
        for span in batch.spans[0]:
            grid = captured.image(layer, 0, span.image)
            for name in ("values", "keys", "keys_pre_rope"):
                tensors[f"{name}.{layer}.{span.image}"] = grid.grid(name).contiguous()
    metadata = {
        "family": mlm.family,
        "model": model,
        "layers": json.dumps(captured.layers),
        "grid_shapes": json.dumps([list(span.grid_shape) for span in batch.spans[0]]),
        "image_spans": json.dumps([[span.start, span.stop] for span in batch.spans[0]]),
        "n_kv_heads": str(mlm.num_kv_heads),
        "head_dim": str(mlm.head_dim),
    }
    with staged_file(target, "--out") as staging:
        save_file(tensors, str(staging), metadata=metadata)
    verify_written(target, "--out")
    return Outcome(
        title=f"kv {model}",
        outputs={"keys/values": str(target)},
        figures={"layers": ",".join(map(str, captured.layers)),
                 "grids (H, W)": ", ".join(f"{h}x{w}" for h, w in (s.grid_shape for s in batch.spans[0])),
                 "tensors": f"{len(tensors)} (values/keys/keys_pre_rope per layer and image, input_ids)"},
    )
