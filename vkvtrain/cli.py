"""`python -m vkvtrain {fit,validate,test,evaluate,probe,kv,tiny}`: parse, build, call.

fit/validate/test go to LightningCLI (vkvtrain.training_cli), evaluate to the BLINK evaluator, probe to the
probe suite; kv and tiny are small typed functions here. Errors vkvtrain raises on bad input end the command
with exit code 2 and one line on stderr; nothing partial is written.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from vkvtrain.errors import VKVError

DELEGATED = {
    "fit": "vkvtrain.training_cli",
    "validate": "vkvtrain.training_cli",
    "test": "vkvtrain.training_cli",
    "evaluate": "vkvtrain.evaluation.cli",
    "probe": "vkvtrain.probes.cli",
}


def parse_layers(text: str | None) -> list[int] | None:
    """"0,3,-1" -> [0, 3, -1]; None or "all" -> None (every layer)."""
    if text is None or text == "all":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise VKVError(f"--layers {text!r} is not a comma-separated list of integers (e.g. 0,3,-1).") from None


def kv_command(
    model: str,
    images: Sequence[str],
    out: str,
    text: str = "",
    prefix: str | None = None,
    layers: str | None = None,
) -> Path:
    """Write one prompt's image keys/values in the grid view to a safetensors file.

    Tensors: input_ids (1, L); values.{layer}.{image}, keys.{layer}.{image} (post-RoPE) and
    keys_pre_rope.{layer}.{image}, each (H, W, n_kv_heads * head_dim). Metadata: family, model, layers,
    grid shapes and image token spans (JSON strings).
    """
    import torch
    from safetensors.torch import save_file

    from vkvtrain import Prompt, load_mlm
    from vkvtrain.layers import resolve_layers
    from vkvtrain.images import load_image
    from vkvtrain.models.loading import load_config

    chosen = parse_layers(layers)
    pictures = [load_image(path) for path in images]
    if not pictures:
        raise VKVError("kv needs at least one --image.")
    n_layers = load_config(model).get_text_config().num_hidden_layers
    resolve_layers(chosen, n_layers, f"--layers of {model}")  # before the weights load
    mlm = load_mlm(model)
    batch = mlm.encode([Prompt(images=pictures, text=text, prefix=prefix)])
    with torch.no_grad(), mlm.capture(chosen) as kv:
        mlm.model(**batch.inputs)
    tensors = {"input_ids": batch.input_ids.contiguous()}
    for layer in kv.layers:
        for span in batch.spans[0]:
            image = kv.image(layer, 0, span.image)
            for name in ("values", "keys", "keys_pre_rope"):
                tensors[f"{name}.{layer}.{span.image}"] = image.grid(name).contiguous()
    metadata = {
        "family": mlm.family,
        "model": model,
        "layers": json.dumps(kv.layers),
        "grid_shapes": json.dumps([list(span.grid_shape) for span in batch.spans[0]]),
        "image_spans": json.dumps([[span.start, span.stop] for span in batch.spans[0]]),
        "n_kv_heads": str(mlm.num_kv_heads),
        "head_dim": str(mlm.head_dim),
    }
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".kv-", suffix=".safetensors", dir=target.parent)
    os.close(handle)
    try:
        save_file(tensors, staging, metadata=metadata)
        os.replace(staging, target)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    return target


def tiny_command(family: str, out: str, size: str = "tiny") -> Path:
    """Write a tiny checkpoint of `family` as a standard HF folder."""
    from vkvtrain.models.registry import families
    from vkvtrain.models.tiny import build_tiny

    if family not in families():
        raise VKVError(f"unknown family {family!r}; choose one of {', '.join(families())}.")
    return build_tiny(family, out, size=size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vkvtrain", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in DELEGATED:
        commands.add_parser(name, add_help=False, help=f"see `python -m vkvtrain {name} --help`")
    kv = commands.add_parser("kv", help="write one prompt's image keys/values to a safetensors file")
    kv.add_argument("model", help="hub id, local folder or tiny://<family>")
    kv.add_argument("--image", action="append", required=True, dest="images", help="image file (repeatable)")
    kv.add_argument("--text", default="", help="question placed after the image(s)")
    kv.add_argument("--prefix", default=None, help="text placed immediately before the image(s)")
    kv.add_argument("--layers", default=None, help="comma-separated LM layers (default: all)")
    kv.add_argument("--out", required=True, help="output .safetensors file")
    tiny = commands.add_parser("tiny", help="write a tiny random checkpoint of a supported family")
    tiny.add_argument("family")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--size", default="tiny", choices=("tiny", "mid"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one-line errors on stderr, not weight-loading bars
    try:
        if argv and argv[0] in DELEGATED:
            module = importlib.import_module(DELEGATED[argv[0]])
            return int(module.main(argv) or 0)
        args = build_parser().parse_args(argv)
        if args.command == "kv":
            path = kv_command(args.model, args.images, args.out, args.text, args.prefix, args.layers)
        else:
            path = tiny_command(args.family, args.out, args.size)
        print(path)
        return 0
    except VKVError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
