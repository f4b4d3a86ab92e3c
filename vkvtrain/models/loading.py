"""`load_mlm`: one call from a hub id, a local HF folder, `tiny://<family>` or `organism://<family>` to a ready
`MLM`."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from vkvtrain.entry_points import resolve_entry
from vkvtrain.errors import ModelLoadError, RecipeError, UnsupportedModelError
from vkvtrain.mlm import MLM
from vkvtrain.models.quantization import Quantization, unmatched_skip_modules
from vkvtrain.models.registry import adapter_for, families
from vkvtrain.models.tiny import TINY_SCHEME, ensure_tiny, has_weights, parse_tiny
from vkvtrain.organism.names import ORGANISM_RESOLVER, ORGANISM_SCHEME

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def _resolve_source(name_or_path: str) -> tuple[str, bool]:
    """(path or hub id to load from, whether it is a tiny checkpoint)."""
    if name_or_path.startswith(TINY_SCHEME):
        family, size = parse_tiny(name_or_path)
        if family not in families():
            raise UnsupportedModelError(
                f"unknown tiny checkpoint {name_or_path!r}; supported: "
                + ", ".join(f"{TINY_SCHEME}{f}" for f in families())
            )
        return str(ensure_tiny(family, size)), True
    if name_or_path.startswith(ORGANISM_SCHEME):
        # the builder trains (minutes) and imports evaluation and probes: looked up only when named, by its
        # dotted path, as the command table does (vkvtrain.cli)
        resolve: Callable[[str], Path] = resolve_entry(ORGANISM_RESOLVER)
        return str(resolve(name_or_path)), True
    return name_or_path, False


def load_config(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False) -> PretrainedConfig:
    """The config of a model, or a `ModelLoadError` that says where vkvtrain looked and what to do."""
    source, _ = _resolve_source(name_or_path)
    looks_local = source.startswith(("/", "./", "../", "~")) or Path(source).exists()
    if looks_local and not (Path(source).expanduser() / "config.json").is_file():
        raise ModelLoadError(
            f"{name_or_path!r} is not a model folder (no config.json there); give a folder written by "
            "save_pretrained, a hub id, or tiny://<family>."
        )
    try:
        return AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"cannot load a model config from {name_or_path!r}: {str(error).splitlines()[0]} "
            "Give a local folder written by save_pretrained, a hub id reachable from this machine (unset "
            "HF_HUB_OFFLINE), or " + " | ".join(f"{TINY_SCHEME}{f}" for f in families()) + "."
        ) from error


def load_mlm(
    name_or_path: str,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    quantization: Quantization | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    random_init: bool = False,
    init_seed: int | None = None,
) -> MLM:
    """Load a supported MLM and its processor.

    Args:
        name_or_path: hub id (e.g. "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"), a local folder written by
            `save_pretrained`, or "tiny://llava_onevision" / "tiny://qwen2_5_vl" / "tiny://llava_next"
            (append "@mid" for the ~30M-parameter benchmark size, or a published size such as "@0.5b" or
            "@7b" for that checkpoint's architecture with random weights; see `vkvtrain.models.tiny`). A
            config-only folder (a published size too large to build weights for) loads on the meta device:
            shapes, layers and module names resolve, any forward is refused; ``random_init=True`` with a
            ``device_map`` builds fresh weights on that device instead.
        dtype: "bfloat16", "float16", "float32" or a torch dtype; None keeps float32.
        attn_implementation: "eager", "sdpa" or "flash_attention_2"; None lets transformers choose.
        device_map: passed to `from_pretrained` (e.g. "auto", "cuda:0").
        quantization: bitsandbytes loading of the LM (`vkvtrain.models.quantization.Quantization`) or None;
            the family's vision tower and projector stay unquantized.
        revision: hub revision (branch, tag or commit) to pin.
        trust_remote_code: off by default; only the stock transformers classes are supported anyway.
        random_init: build the same architecture with freshly initialised weights (the probes' random-init
            control); the processor is the checkpoint's own.
        init_seed: with random_init, the seed of those weights (the global torch RNG is left untouched);
            None draws from the global RNG. tiny:// checkpoints are themselves built from seed 0.
    Returns:
        An `MLM` with the model in eval mode.
    """
    source, _ = _resolve_source(name_or_path)
    config = load_config(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    adapter = adapter_for(config.model_type, source=name_or_path)
    model_class = getattr(transformers, adapter.model_class_name)
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization is not None:
        kwargs["quantization_config"] = quantization.to_bnb_config(adapter.vision_modules)
        with torch.device("meta"):  # a misspelt skip entry would quantize the vision side: check before loading
            skeleton = model_class._from_config(config)
        _check_skip_modules(skeleton, quantization.skip_list(adapter.vision_modules), name_or_path)
    if random_init:
        with torch.random.fork_rng(devices=[]):
            if init_seed is not None:
                torch.manual_seed(init_seed)
            model = _random_init(model_class, config, kwargs)
    elif not has_weights(source):
        model = _meta_model(model_class, config, kwargs, name_or_path, adapter.vision_modules, quantization)
    else:
        model = model_class.from_pretrained(source, **kwargs)
    processor = adapter.processor_class.from_pretrained(source, revision=revision or "main")
    processor.tokenizer.padding_side = "left"
    model.eval()
    return MLM(model=model, processor=processor, adapter=adapter, name=name_or_path)


def _check_skip_modules(model: nn.Module, skip: list[str], name: str) -> list[str]:
    """``skip`` when each entry names a module of ``model``; else a RecipeError naming the strays."""
    missing = unmatched_skip_modules(model, skip)
    if missing:
        near_top = [n for n, _ in model.named_modules() if n and n.count(".") <= 1]
        raise RecipeError(f"model.quantization.skip_modules {missing} name no module of {name} (its top modules: "
                          f"{', '.join(near_top)}); fix the names or drop skip_modules to use the family default.")
    return skip


def _meta_model(model_class: Any, config: PretrainedConfig, kwargs: dict[str, Any], name: str,
                vision_modules: tuple[str, ...], quantization: Quantization | None) -> PreTrainedModel:
    """``model_class`` built on the meta device from a config-only folder; its forward raises a clear error.

    Quantization cannot apply to weights that do not exist: the model stays unquantized, with a warning."""
    if kwargs.get("device_map") is not None:
        raise ModelLoadError(
            f"{name} has no weights (a config-only published size, too large to build weights for here), so "
            f"it cannot be placed on {kwargs['device_map']!r}; load it with random_init=True to build fresh "
            "weights on that device."
        )
    init_kwargs = {k: kwargs[k] for k in ("dtype", "attn_implementation") if k in kwargs}
    with torch.device("meta"):
        model = model_class._from_config(config, **init_kwargs)
    assert isinstance(model, PreTrainedModel)
    if quantization is not None:  # its skip modules were checked by load_mlm
        warnings.warn(f"{name} is config-only (meta device): quantization is not applied (there are no weights "
                      f"to quantize); its skip modules {quantization.skip_list(vision_modules)} resolve.", stacklevel=3)

    def refuse_forward(module: nn.Module, args: tuple[Any, ...], call_kwargs: dict[str, Any]) -> None:
        raise ModelLoadError(
            f"{name} was built on the meta device (config and processor only: the published size is too large "
            "to build weights for on this machine), so it cannot run a forward. It resolves shapes, layers and "
            "module names. To run it, load it with random_init=True and a device_map (e.g. 'cuda:0'), or use a "
            "smaller size."
        )

    model.register_forward_pre_hook(refuse_forward, with_kwargs=True)
    return model


def _random_init(model_class: Any, config: PretrainedConfig, kwargs: dict[str, Any]) -> PreTrainedModel:
    """``model_class`` with the checkpoint's config and fresh weights, on ``device_map`` when it names one device."""
    if "quantization_config" in kwargs:
        raise ModelLoadError("random_init builds full-precision weights; drop quantization for the random control.")
    device = kwargs.get("device_map")
    if (device is not None and not isinstance(device, str)) or device == "auto":
        raise ModelLoadError(
            f"random_init places the model on one device; give device_map as e.g. 'cuda:0', not {device!r}."
        )
    init_kwargs = {k: kwargs[k] for k in ("dtype", "attn_implementation") if k in kwargs}
    with torch.device(device or "cpu"):
        model = model_class._from_config(config, **init_kwargs)
    assert isinstance(model, PreTrainedModel)
    return model
